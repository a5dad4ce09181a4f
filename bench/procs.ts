import { fork, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** Milliseconds since the epoch with sub-millisecond resolution, comparable across processes. */
export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}

const CLK_TCK = 100;

/** CPU seconds (user + system) a process has used so far, from /proc. */
export function cpuSeconds(pid: number | undefined): number {
  if (!pid) return 0;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
  } catch {
    return 0;
  }
}

export function here(rel: string): string {
  return fileURLToPath(new URL(rel, import.meta.url));
}

/** A forked helper process that answers `{id, ...}` requests over IPC. */
export class Worker {
  private seq = 0;
  private readonly pending = new Map<number, { resolve: (v: any) => void; reject: (e: Error) => void }>();
  readonly events: Array<(msg: any) => void> = [];

  private constructor(readonly child: ChildProcess) {
    child.on('message', (msg: any) => {
      if (msg && typeof msg.id === 'number' && this.pending.has(msg.id)) {
        const p = this.pending.get(msg.id)!;
        this.pending.delete(msg.id);
        if (msg.error) p.reject(new Error(msg.error));
        else p.resolve(msg);
      } else {
        for (const fn of this.events) fn(msg);
      }
    });
    child.on('exit', (code) => {
      for (const p of this.pending.values()) p.reject(new Error(`worker exited with ${code}`));
      this.pending.clear();
    });
  }

  static start(script: string, args: string[] = [], env: NodeJS.ProcessEnv = process.env): Worker {
    return new Worker(fork(here(script), args, { env, stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: ['--max-old-space-size=4096'] }));
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  request<T = any>(msg: Record<string, unknown>, timeoutMs = 300_000): Promise<T> {
    const id = ++this.seq;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`worker request ${String(msg.cmd)} timed out`));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (v) => { clearTimeout(timer); resolve(v); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      });
      this.child.send({ ...msg, id });
    });
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(t);
  }
}

/** `waymark serve` in its own process; resolves once its /readyz answers 200. */
export async function startComponent(env: NodeJS.ProcessEnv, adminPort: number): Promise<ChildProcess> {
  // WAYMARK_BENCH_PROFILE=dir writes a V8 CPU profile of the component there (node --cpu-prof).
  const profile = process.env.WAYMARK_BENCH_PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${process.env.WAYMARK_BENCH_PROFILE}`] : [];
  const child = spawn(process.execPath, [...profile, '--expose-gc', '--max-old-space-size=4096', here('../../bin/waymark.js'), 'serve'], {
    env, stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  child.stderr!.on('data', (d: Buffer) => { log = (log + String(d)).slice(-4000); });
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`component exited with ${child.exitCode}: ${log}`);
    const ok = await fetch(`http://127.0.0.1:${adminPort}/readyz`).then((r) => r.ok, () => false);
    if (ok) return child;
    if (Date.now() > deadline) throw new Error(`component not ready after 30 s: ${log}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function stopProcess(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 15_000);
  await exited;
  clearTimeout(t);
}

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}
