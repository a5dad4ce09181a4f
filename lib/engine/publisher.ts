import type autobahn from 'autobahn';
import type { SessionId, Update } from '../protocol/types.js';
import { sessionTopic } from '../protocol/uris.js';

/** The seam between dispatching and WAMP: deliver one Update to one session only. */
export interface Publisher {
  publish(session: SessionId, update: Update): Promise<void>;
}

/**
 * Publishes on the session's own topic with `eligible: [session]`. Crossbar treats an empty
 * `eligible` list as "everyone", so the list always holds exactly the owner.
 *
 * autobahn-js 22 never settles the requests of a session whose transport closed: an
 * acknowledged publish in flight when the router connection drops would hang for good, and
 * with it the dispatcher's group (never fetched again) and any drain. `connectionLost()` fails
 * them instead, so the dispatcher keeps the watch's last delivered state and the refetch after
 * the rejoin sends the result again.
 */
export class WampPublisher implements Publisher {
  /** publishes waiting for their acknowledgement, with the session they were sent on */
  private readonly pending = new Map<(err: Error) => void, autobahn.Session>();

  constructor(private readonly current: () => autobahn.Session | undefined) {}

  publish(session: SessionId, update: Update): Promise<void> {
    const wamp = this.current();
    if (!wamp || !wamp.isOpen) return Promise.reject(new Error('not joined to the router'));
    const ack = wamp.publish(sessionTopic(session), [update], {}, { acknowledge: true, eligible: [session] });
    return new Promise<void>((resolve, reject) => {
      this.pending.set(reject, wamp);
      ack.then(() => { this.pending.delete(reject); resolve(); }, (err: unknown) => { this.pending.delete(reject); reject(err); });
    });
  }

  /**
   * Fail every publish still waiting for an acknowledgement on this session, whose connection
   * closed (autobahn still reports it open while its onclose handlers run).
   */
  connectionLost(closed: autobahn.Session): void {
    for (const [reject, wamp] of this.pending) {
      if (wamp !== closed) continue;
      this.pending.delete(reject);
      reject(new Error('router connection lost before the publish was acknowledged'));
    }
  }
}
