/** Every WAMP URI Waymark speaks, in one place (contract sections 2 and 3). */

export const PROC_WATCH = 'waymark.watch';
export const PROC_UNWATCH = 'waymark.unwatch';
export const PROC_REFRESH = 'waymark.refresh';
export const PROC_AUTHORIZE = 'waymark.authorize';

/** Procedures a browser (role `frontend`) may call. */
export const CLIENT_PROCEDURES: readonly string[] = [PROC_WATCH, PROC_UNWATCH, PROC_REFRESH];

export const SESSION_TOPIC_PREFIX = 'waymark.session.';

/** The private topic of one WAMP session: `waymark.session.<id as decimal digits>`. */
export function sessionTopic(session: number): string {
  return SESSION_TOPIC_PREFIX + String(session);
}

/**
 * Shared by all browsers. Waymark announces here, right after registering its procedures and
 * the authorizer: `{ event: 'started', instance }` when a process joins (clients re-watch
 * whatever a restarted instance lost) and `{ event: 'rejoined', instance }` when it joins again
 * after losing the router (it kept its watches; clients still waiting to join retry now). A
 * survivor announces `{ event: 'resync', instance }` when another instance left.
 */
export const ANNOUNCE_TOPIC = 'waymark.announce';

/**
 * The one WebSocket subprotocol Waymark offers. autobahn's default joins every serializer it
 * has into one header value, which ws 8 rejects in Node; JSON is what routers picked anyway,
 * and naming it keeps the serializer the same on every router.
 */
export const WAMP_SUBPROTOCOLS: string[] = ['wamp.2.json'];

/**
 * Backend-only topics the instances of one service talk on (section 7 of the contract). The
 * browser role may never subscribe or publish here: `refresh` carries credentials.
 */
export const INTERNAL_PREFIX = 'waymark.internal.';
/** `{ service, instance, session }`: an instance joined with this WAMP session */
export const INTERNAL_JOINED = 'waymark.internal.joined';
/** `{ service, instance, session, watch }`: that instance now owns the watch; others drop it */
export const INTERNAL_CLAIM = 'waymark.internal.claim';
/** `{ service, session, watch }`: unwatched on another instance; the owner drops it */
export const INTERNAL_UNWATCH = 'waymark.internal.unwatch';
/** `{ service, session, headers }`: new credentials for every watch of the session, wherever it is */
export const INTERNAL_REFRESH = 'waymark.internal.refresh';

export const META_ON_LEAVE = 'wamp.session.on_leave';
/** The router's live session ids (Crossbar: `[id, ...]`), for reconciling after a reconnect. */
export const META_SESSION_LIST = 'wamp.session.list';

export const ERROR_URIS = {
  invalid_argument: 'waymark.error.invalid_argument',
  invalid_path: 'waymark.error.invalid_path',
  header_not_allowed: 'waymark.error.header_not_allowed',
  too_many_watches: 'waymark.error.too_many_watches',
  rate_limited: 'waymark.error.rate_limited',
  no_caller: 'waymark.error.no_caller',
} as const;

export type ErrorCode = keyof typeof ERROR_URIS;
