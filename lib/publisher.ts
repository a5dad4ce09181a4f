import type autobahn from 'autobahn';
import type { SessionId, Update } from './types.js';
import { sessionTopic } from './uris.js';

/** The seam between dispatching and WAMP: deliver one Update to one session only. */
export interface Publisher {
  publish(session: SessionId, update: Update): Promise<void>;
}

/**
 * Publishes on the session's own topic with `eligible: [session]`. Crossbar treats an empty
 * `eligible` list as "everyone", so the list always holds exactly the owner.
 */
export class WampPublisher implements Publisher {
  constructor(private readonly current: () => autobahn.Session | undefined) {}

  async publish(session: SessionId, update: Update): Promise<void> {
    const wamp = this.current();
    if (!wamp || !wamp.isOpen) throw new Error('not joined to the router');
    await wamp.publish(sessionTopic(session), [update], {}, { acknowledge: true, eligible: [session] });
  }
}
