import { ANNOUNCE_TOPIC, CLIENT_PROCEDURES, INTERNAL_PREFIX, SESSION_TOPIC_PREFIX } from '../protocol/uris.js';

/** What Crossbar passes a dynamic authorizer as its first argument (subset we read). */
export interface AuthorizeSessionDetails {
  session: number;
  authid?: string;
  authrole?: string;
}

export type AuthorizeAction = 'call' | 'register' | 'subscribe' | 'publish' | string;

export type AuthorizeAnswer = false | { allow: true; disclose?: boolean; cache: boolean };

/**
 * The rule behind `waymark.authorize`, the Crossbar dynamic authorizer of the browser role.
 * Pure so that the dev router adapter enforces exactly the same rule.
 *
 * - calling the client procedures is allowed and the caller disclosed (watches are owned by
 *   `details.caller`); that answer is the same for every session, so Crossbar may cache it;
 * - an exact subscribe to the session's own topic is allowed, never cached: Crossbar caches per
 *   (role, uri, action), and another session's topic must not inherit the answer;
 * - an exact subscribe to the shared announcement topic is allowed (same for all: cacheable);
 * - everything else, including prefix/wildcard subscribes and any register or publish, is denied;
 *   above all `waymark.internal.*`, where the instances pass each other credentials.
 */
export function authorize(
  details: AuthorizeSessionDetails | undefined,
  uri: unknown,
  action: AuthorizeAction,
  options?: { match?: string } | null,
): AuthorizeAnswer {
  if (!details || typeof details.session !== 'number' || typeof uri !== 'string') return false;
  if (uri.startsWith(INTERNAL_PREFIX)) return false;
  if (action === 'call' && CLIENT_PROCEDURES.includes(uri)) {
    return { allow: true, disclose: true, cache: true };
  }
  if (action === 'subscribe') {
    const match = options?.match ?? 'exact';
    if (match === 'exact' && uri === SESSION_TOPIC_PREFIX + String(details.session)) {
      return { allow: true, cache: false };
    }
    if (match === 'exact' && uri === ANNOUNCE_TOPIC) return { allow: true, cache: true };
  }
  return false;
}
