import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { waitFor } from './env.js';

export const BIN = fileURLToPath(new URL('../../../bin/waymark.js', import.meta.url));

/** The environment without any WAYMARK_* setting of the machine the specs run on. */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('WAYMARK_')) env[k] = v;
  return { ...env, ...extra };
}

export interface Proc {
  child: ChildProcess;
  stdout: string;
  stderr: string;
  exited: Promise<number | null>;
  waitForOutput(what: RegExp, stream?: 'stdout' | 'stderr', timeoutMs?: number): Promise<RegExpMatchArray>;
  kill(signal?: NodeJS.Signals): void;
}

/** Run `waymark <args>` as a real process, collecting its output. */
export function runCli(args: string[], env: NodeJS.ProcessEnv): Proc {
  const child = spawn(process.execPath, [BIN, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const proc: Proc = {
    child,
    stdout: '',
    stderr: '',
    exited: new Promise((resolve) => child.on('exit', (code) => resolve(code))),
    waitForOutput: (what, stream = 'stdout', timeoutMs = 10_000) =>
      waitFor(`${what} on ${stream} of waymark ${args[0]} (have: ${JSON.stringify(proc[stream].slice(-400))})`, () => proc[stream].match(what), timeoutMs),
    kill: (signal = 'SIGTERM') => { if (child.exitCode === null) child.kill(signal); },
  };
  child.stdout!.on('data', (d) => { proc.stdout += String(d); });
  child.stderr!.on('data', (d) => { proc.stderr += String(d); });
  return proc;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

/** The processes one spec file starts, so that its afterEach leaves none running. */
export class CliRunner {
  private readonly procs: Proc[] = [];

  run(args: string[], env: NodeJS.ProcessEnv): Proc {
    const p = runCli(args, env);
    this.procs.push(p);
    return p;
  }

  async killAll(): Promise<void> {
    for (const p of this.procs.splice(0)) {
      p.kill('SIGKILL');
      await p.exited;
    }
  }
}
