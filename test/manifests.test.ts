import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { SECRET_ENV } from '../src/credentials.js';
import type { DaemonConfig } from '../src/daemon/config.js';
import { ENV_ALIASES, loadConfig } from '../src/daemon/config.js';
import { HARD_STOP_MARGIN_MS } from '../src/daemon/daemon.js';
import { useDaemon } from './daemons.js';
import { parseYamlDocuments } from './yaml.js';

// deploy/kubernetes is not applied here (no cluster): these tests hold it to the code instead,
// so that a renamed route, variable or default breaks a test rather than a rollout
const root = path.join(import.meta.dirname, '..');
const dir = path.join(root, 'deploy', 'kubernetes');

type Doc = { apiVersion: string; kind: string; metadata: { name: string; labels?: Record<string, string> }; spec?: Record<string, unknown>; stringData?: Record<string, string> };
type Probe = { httpGet: { path: string; port: string | number } };
type Container = {
  name: string;
  ports: Array<{ name: string; containerPort: number }>;
  env: Array<{ name: string; value: string }>;
  volumeMounts: Array<{ name: string; mountPath: string; readOnly?: boolean }>;
  livenessProbe: Probe;
  readinessProbe: Probe;
  startupProbe?: Probe;
  securityContext: { readOnlyRootFilesystem?: boolean; allowPrivilegeEscalation?: boolean };
};
type PodSpec = {
  terminationGracePeriodSeconds: number;
  securityContext: { runAsNonRoot?: boolean; runAsUser?: number };
  containers: Container[];
  volumes: Array<{ name: string; secret?: { secretName: string }; emptyDir?: unknown }>;
};
type Workload = Doc & { spec: { replicas: number; selector: { matchLabels: Record<string, string> }; template: { metadata: { labels: Record<string, string> }; spec: PodSpec } } };

const manifests = Object.fromEntries(
  readdirSync(dir)
    .filter((name) => name.endsWith('.yaml'))
    .map((name) => [name, parseYamlDocuments(readFileSync(path.join(dir, name), 'utf8')) as Doc[]]),
);

/** The runtime stage's ENV of the Dockerfile: what the image sets before the manifests' env. */
function imageEnv(): Record<string, string> {
  const dockerfile = readFileSync(path.join(root, 'Dockerfile'), 'utf8');
  const runtime = dockerfile.split(/^FROM /m).at(-1) ?? '';
  const env: Record<string, string> = {};
  for (const [, body] of runtime.matchAll(/^ENV ((?:[^\n]*\\\n)*[^\n]*)/gm)) {
    for (const pair of body!.replaceAll('\\\n', ' ').split(/\s+/).filter(Boolean)) {
      const eq = pair.indexOf('=');
      env[pair.slice(0, eq)] = pair.slice(eq + 1);
    }
  }
  return env;
}

/** Secrets the CLI reads (each also as NAME_FILE): the providers' and those of the daemon. */
const cli = readFileSync(path.join(root, 'src', 'cli.ts'), 'utf8');
const SECRETS = new Set([...Object.values(SECRET_ENV).flatMap((names) => Object.values(names).filter((name): name is string => name !== undefined)), ...[...cli.matchAll(/readSecret\(env, '([A-Z_]+)'\)/g)].map((m) => m[1]!)]);

function workloadOf(docs: Doc[]): Workload {
  const workloads = docs.filter((doc) => doc.kind === 'StatefulSet' || doc.kind === 'Deployment');
  expect(workloads).toHaveLength(1);
  return workloads[0] as Workload;
}

function the<T extends Doc>(docs: Doc[], kind: string): T {
  const found = docs.filter((doc) => doc.kind === kind);
  expect(found, kind).toHaveLength(1);
  return found[0] as T;
}

/** The daemon's configuration in the pod: the image's env, then the manifest's settings. */
function effectiveConfig(container: Container): DaemonConfig {
  const settings = Object.fromEntries(container.env.filter(({ name }) => !name.endsWith('_FILE') && name.startsWith('RUNWATCH_')).map(({ name, value }) => [name, value]));
  return loadConfig({ env: { ...imageEnv(), ...settings } });
}

describe('deploy/kubernetes', () => {
  it('has the single-replica SQLite and the Redis fleet manifests, and every document reads', () => {
    expect(Object.keys(manifests).sort()).toEqual(['redis.yaml', 'sqlite.yaml']);
    for (const docs of Object.values(manifests)) {
      for (const doc of docs) {
        expect(doc.apiVersion).toMatch(/^(v1|apps\/v1|policy\/v1)$/);
        expect(doc.metadata.name).toBe('runwatch');
      }
    }
  });

  describe.each(Object.keys(manifests))('%s', (file) => {
    const docs = manifests[file]!;
    const workload = workloadOf(docs);
    const pod = workload.spec.template.spec;
    const container = pod.containers[0]!;

    it('names only variables the daemon reads: settings the config loader knows, *_FILE of secrets the CLI reads', () => {
      for (const { name, value } of container.env) {
        expect(typeof value, name).toBe('string');
        if (name.endsWith('_FILE')) {
          expect(SECRETS, name).toContain(name.slice(0, -'_FILE'.length));
        } else {
          expect(name in ENV_ALIASES || (name.startsWith('RUNWATCH_') && name.includes('__')), name).toBe(true);
          // an unknown RUNWATCH_<SECTION>__<SETTING> throws
          expect(() => loadConfig({ env: { [name]: value } }), name).not.toThrow();
        }
      }
      // secrets as files only, never as plain values
      expect(container.env.filter(({ name }) => SECRETS.has(name))).toEqual([]);
      expect(container.env.map(({ name }) => name)).toContain('RUNWATCH_CONTROL_TOKEN_FILE');
    });

    it('points every *_FILE at a key of the Secret, mounted read-only', () => {
      const secret = the(docs, 'Secret');
      for (const { name, value } of container.env.filter(({ name }) => name.endsWith('_FILE'))) {
        const mount = container.volumeMounts.find((m) => m.mountPath === path.posix.dirname(value));
        expect(mount, name).toBeDefined();
        expect(mount!.readOnly).toBe(true);
        expect(pod.volumes.find((v) => v.name === mount!.name)?.secret?.secretName).toBe(secret.metadata.name);
        expect(Object.keys(secret.stringData ?? {}), name).toContain(path.posix.basename(value));
      }
    });

    it('serves on the port the daemon listens on, probes /healthz (liveness) and /readyz (readiness)', () => {
      const config = effectiveConfig(container);
      const http = container.ports.find((port) => port.name === 'http');
      expect(http?.containerPort).toBe(config.daemon.port);
      expect(container.livenessProbe.httpGet).toEqual({ path: '/healthz', port: 'http' });
      expect(container.readinessProbe.httpGet).toEqual({ path: '/readyz', port: 'http' });
      if (container.startupProbe) expect(container.startupProbe.httpGet).toEqual({ path: '/healthz', port: 'http' });
      const service = the<Doc & { spec: { selector: Record<string, string>; ports: Array<{ targetPort: string }> } }>(docs, 'Service');
      expect(service.spec.ports.map((p) => p.targetPort)).toEqual(['http']);
      expect(service.spec.selector).toEqual(workload.spec.template.metadata.labels);
      expect(workload.spec.selector.matchLabels).toEqual(workload.spec.template.metadata.labels);
    });

    it('gives the shutdown its time: terminationGracePeriodSeconds above shutdownTimeoutMs and the hard stop', () => {
      const config = effectiveConfig(container);
      expect(pod.terminationGracePeriodSeconds * 1000).toBeGreaterThan(config.daemon.shutdownTimeoutMs + HARD_STOP_MARGIN_MS);
    });

    it('runs as the image\'s user, not root, on a read-only root file system', () => {
      expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 1000 });
      expect(container.securityContext).toMatchObject({ readOnlyRootFilesystem: true, allowPrivilegeEscalation: false });
    });
  });

  it('sqlite.yaml: one replica, the data dir on a PersistentVolumeClaim', () => {
    const docs = manifests['sqlite.yaml']!;
    const workload = workloadOf(docs) as Workload & { spec: { volumeClaimTemplates: Array<{ metadata: { name: string } }> } };
    const container = workload.spec.template.spec.containers[0]!;
    const config = effectiveConfig(container);
    expect(workload.kind).toBe('StatefulSet');
    expect(workload.spec.replicas).toBe(1);
    expect(config.store.kind).toBe('sqlite');
    const data = container.volumeMounts.find((m) => m.mountPath === config.daemon.dataDir);
    expect(data, config.daemon.dataDir).toBeDefined();
    expect(workload.spec.volumeClaimTemplates.map((claim) => claim.metadata.name)).toContain(data!.name);
    expect(docs.some((doc) => doc.kind === 'PodDisruptionBudget')).toBe(false);
  });

  it('redis.yaml: three replicas on the Redis store, a PodDisruptionBudget that leaves two', () => {
    const docs = manifests['redis.yaml']!;
    const workload = workloadOf(docs);
    const container = workload.spec.template.spec.containers[0]!;
    expect(workload.kind).toBe('Deployment');
    expect(workload.spec.replicas).toBe(3);
    expect(effectiveConfig(container).store.kind).toBe('redis');
    expect(container.env.map(({ name }) => name)).toContain('RUNWATCH_REDIS_URL_FILE');
    const pdb = the<Doc & { spec: { minAvailable: number; selector: { matchLabels: Record<string, string> } } }>(docs, 'PodDisruptionBudget');
    expect(pdb.spec.selector.matchLabels).toEqual(workload.spec.template.metadata.labels);
    expect(pdb.spec.minAvailable).toBeLessThan(workload.spec.replicas);
    expect(pdb.spec.minAvailable).toBeGreaterThanOrEqual(2);
  });

  describe('the probe paths on a daemon with a control token', () => {
    const t = useDaemon('memory', { skip: false, key: 'sk-manifests', secrets: { controlToken: 'manifest-token' } });
    const paths = new Set(Object.values(manifests).flatMap((docs) => {
      const container = workloadOf(docs).spec.template.spec.containers[0]!;
      return [container.livenessProbe, container.readinessProbe, container.startupProbe].flatMap((probe) => (probe ? [probe.httpGet.path] : []));
    }));

    it('answer 200 without the token (the kubelet sends none), while the API needs it', async () => {
      expect([...paths].sort()).toEqual(['/healthz', '/readyz']);
      for (const probePath of paths) expect((await fetch(`${t.base}${probePath}`)).status, probePath).toBe(200);
      expect((await fetch(`${t.base}/v1/watches`)).status).toBe(401);
    });
  });
});

describe('test/yaml.ts', () => {
  it('reads mappings, sequences, nested items, scalars and comments', () => {
    const text = ['a: 1 # one', 'b:', '  - x', '  - name: n', '    v: "8000"', '  - ["ALL"]', 'c:', '- true', "d: 'it''s'", 'e:', '---', 'f: http://h:1/p#x'].join('\n');
    expect(parseYamlDocuments(text)).toEqual([{ a: 1, b: ['x', { name: 'n', v: '8000' }, ['ALL']], c: [true], d: "it's", e: null }, { f: 'http://h:1/p#x' }]);
  });

  it.each(['a: |\n  text', 'a: &x 1', 'a:\n\t- 1', 'a: 0440', 'a: 1\na: 2', 'a:\n  b: 1\n c: 2'])('refuses what it does not read: %j', (text) => {
    expect(() => parseYamlDocuments(text)).toThrow();
  });
});
