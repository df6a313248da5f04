import { execFileSync } from 'node:child_process';
import { existsSync, statSync, readdirSync } from 'node:fs';
import path from 'node:path';

/** Integration tests spawn dist/cli.js: build it when it is missing or older than src/. */
export default function setup(): void {
  const root = import.meta.dirname;
  const cli = path.join(root, 'dist', 'cli.js');
  const newestSource = Math.max(...readdirSync(path.join(root, 'src'), { recursive: true, encoding: 'utf8' }).map((f) => statSync(path.join(root, 'src', f)).mtimeMs));
  if (!existsSync(cli) || statSync(cli).mtimeMs < newestSource) {
    execFileSync(process.execPath, [path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json'], { cwd: root, stdio: 'inherit' });
  }
}
