/** Bounded waits, for every place that must not hang on a peer that stopped answering. */

/** The work did not settle in time. */
export class DeadlineError extends Error {}

/** `work`'s outcome, or a DeadlineError(`message`) after `ms` (calling `onTimeout` first). */
export function withDeadline<T>(work: Promise<T>, ms: number, message: string, onTimeout?: () => void): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      onTimeout?.();
      reject(new DeadlineError(message));
    }, ms);
  });
  return Promise.race([work, timeout]).finally(() => clearTimeout(timer));
}

/** Wait for `work` (its rejection included), but no longer than `ms`; after that, go on. */
export async function waitAtMost(work: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([work, new Promise<void>((resolve) => { timer = setTimeout(resolve, ms); })]);
  } finally {
    clearTimeout(timer);
  }
}
