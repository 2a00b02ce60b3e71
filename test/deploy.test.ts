/**
 * The shipping files: Dockerfile, Kubernetes (kustomize base + GPU overlay), Istio, Envoy, the
 * prometheus-adapter rule. Every manifest is rendered with the real kustomize and checked against
 * the Kubernetes and Istio schemas twice (kubernetes-models' OpenAPI validators for required fields
 * and enums; strict decoding into k8s.io/api and istio.io/api types for unknown fields and types),
 * Envoy files against Envoy's protos and validation rules; then the settings are checked against
 * the server itself: the ConfigMap is parsed by the server's config parser and boots a real server
 * from the files the image ships, whose /metrics must carry the series the autoscaler scales on.
 */
import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import test, { type ExecutionContext } from 'ava';
import { validate as lintDockerfile } from 'dockerfile-utils';
import { parse as parseYaml, parseAllDocuments } from 'yaml';
import { ensureKustomize } from '../tools/go-tools.js';
import { fetchMetricsText, freePort } from '../tools/loopback.js';
import { parseServerConfig, SERVER_SETTINGS } from '../src/config/server-config.js';
import { projectRoot } from '../src/paths.js';
import { LIVENESS_SERVICE } from '../src/transport/grpc/server-lifecycle.js';
import { defaultModelDir } from './support/default-model.js';

const ROOT = projectRoot();
const DEPLOY = join(ROOT, 'deploy');
const KUSTOMIZATIONS = ['k8s/base', 'k8s/overlays/gpu', 'istio'] as const;
const SERVICE = 'llm.v1.TextGeneration';
/**
 * The slowest start the README and deploy/README document: ~1.5–2 s to SERVING on 2 cores with the
 * model in the page cache. A named figure rather than bench/results/cold-start.json, so re-running a
 * benchmark cannot move a test's bound.
 */
const STARTUP_PROBE_PERIOD_MAX_S = 2;

// biome-ignore lint/suspicious/noExplicitAny: manifests are free-form YAML
type Obj = Record<string, any>;

const execFileAsync = promisify(execFile);

let validatorBinary: string | undefined;
/** Builds deploy/validate (Go: k8s.io/api, istio.io/api, Envoy's go-control-plane) once. */
function deployValidator(): string {
  if (validatorBinary === undefined) {
    const out = join(mkdtempSync(join(tmpdir(), 'anpd-validate-')), 'validate');
    execFileSync('go', ['build', '-o', out, '.'], {
      cwd: join(DEPLOY, 'validate'),
      stdio: 'inherit',
      timeout: 900_000,
    });
    validatorBinary = out;
  }
  return validatorBinary;
}

async function runValidator(
  mode: 'k8s' | 'envoy' | 'envoy-patch',
  files: readonly string[],
): Promise<{ ok: boolean; output: string }> {
  try {
    const { stdout } = await execFileAsync(deployValidator(), [mode, ...files], { encoding: 'utf8' });
    return { ok: true, output: stdout };
  } catch (error) {
    return { ok: false, output: String((error as { stdout?: string }).stdout ?? error) };
  }
}

const rendered = new Map<string, { yaml: string; objects: Obj[] }>();
function render(kustomization: string): { yaml: string; objects: Obj[] } {
  let result = rendered.get(kustomization);
  if (result === undefined) {
    const yaml = execFileSync(ensureKustomize(), ['build', join(DEPLOY, kustomization)], { encoding: 'utf8' });
    const objects = parseAllDocuments(yaml)
      .map((d) => d.toJS() as Obj)
      .filter((o) => o !== null);
    result = { yaml, objects };
    rendered.set(kustomization, result);
  }
  return result;
}

function find(objects: readonly Obj[], kind: string, name?: string): Obj {
  const found = objects.find((o) => o['kind'] === kind && (name === undefined || o['metadata']?.['name'] === name));
  if (found === undefined) throw new Error(`no ${kind}${name ? ` ${name}` : ''} in the rendered manifests`);
  return found;
}

/** kubernetes-models (core) or @kubernetes-models/istio class for an apiVersion + kind. */
async function modelClass(apiVersion: string, kind: string): Promise<new (data: Obj) => { validate(): void }> {
  const [group, version] = apiVersion.includes('/') ? apiVersion.split('/') : [undefined, apiVersion];
  const specifier =
    group === undefined
      ? `kubernetes-models/${version}/${kind}`
      : group.endsWith('istio.io')
        ? `@kubernetes-models/istio/${group}/${version}/${kind}`
        : `kubernetes-models/${group}/${version}/${kind}`;
  const module = (await import(specifier)) as Record<string, new (data: Obj) => { validate(): void }>;
  const model = module[kind];
  if (model === undefined) throw new Error(`${specifier} has no ${kind}`);
  return model;
}

function yamlFilesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && /\.ya?ml$/.test(e.name))
    .map((e) => relative(DEPLOY, join(e.parentPath, e.name)));
}

for (const kustomization of KUSTOMIZATIONS) {
  test.serial(
    `${kustomization}: kustomize renders it and every object passes the Kubernetes / Istio schemas`,
    async (t) => {
      const { yaml, objects } = render(kustomization);
      t.true(objects.length > 0);
      for (const object of objects) {
        const Model = await modelClass(object['apiVersion'], object['kind']);
        t.notThrows(() => new Model(object).validate(), `${object['kind']} ${object['metadata']?.['name']}`);
      }
      const file = join(mkdtempSync(join(tmpdir(), 'anpd-k8s-')), 'rendered.yaml');
      writeFileSync(file, yaml);
      const strict = await runValidator('k8s', [file]);
      t.true(strict.ok, strict.output);
    },
  );
}

/**
 * Asserts the validator refused `file` for `reason`: a crash, a failed build or a refusal for some
 * other reason must not pass for the rejection a check expects.
 */
async function assertRejected(
  t: ExecutionContext,
  mode: 'k8s' | 'envoy' | 'envoy-patch',
  file: string,
  reason: RegExp,
  what: string,
): Promise<void> {
  const result = await runValidator(mode, [file]);
  t.false(result.ok, `${what}: accepted`);
  t.regex(result.output, reason, what);
}

test.serial(
  'the validators reject a typo, a wrong type and a bad quantity, naming the field or value (the checks above can fail)',
  async (t) => {
    const deployment = find(render('k8s/base').objects, 'Deployment');
    const typo = structuredClone(deployment);
    typo['spec']['template']['spec']['containers'][0]['readinessProbe']['periodSecond'] = 5;
    const wrongType = structuredClone(deployment);
    wrongType['spec']['template']['spec']['containers'][0]['ports'][0]['containerPort'] = 'grpc';
    const badQuantity = structuredClone(deployment);
    badQuantity['spec']['template']['spec']['containers'][0]['resources']['limits']['memory'] = '1.5 GB';
    const dir = mkdtempSync(join(tmpdir(), 'anpd-k8s-bad-'));
    // k8s.io/apimachinery's Quantity decoder names neither the field nor the value, only the quantity
    // grammar; kubernetes-models names the field (below).
    const expected = {
      typo: /unknown field "periodSecond"/,
      wrongType: /cannot unmarshal string into Go struct field \S*\.containerPort of type int32/,
      badQuantity: /apps\/v1\/Deployment "anpd-serve": .*quantities must match the regular expression/,
    };
    for (const [name, object] of Object.entries({ typo, wrongType, badQuantity })) {
      const file = join(dir, `${name}.yaml`);
      writeFileSync(file, JSON.stringify(object));
      await assertRejected(t, 'k8s', file, expected[name as keyof typeof expected], name);
    }
    const Model = await modelClass('apps/v1', 'Deployment');
    t.throws(() => new Model(wrongType).validate(), {
      message: /containers\/0\/ports\/0\/containerPort must be integer/,
    });
    t.throws(() => new Model(badQuantity).validate(), {
      message: /containers\/0\/resources\/limits\/memory must match format "quantity"/,
    });
    const virtualService = structuredClone(find(render('istio').objects, 'VirtualService'));
    virtualService['spec']['http'][0]['retries']['attempts'] = 'none';
    const file = join(dir, 'vs.yaml');
    writeFileSync(file, JSON.stringify(virtualService));
    await assertRejected(
      t,
      'k8s',
      file,
      /invalid value for int32 field attempts: "none"/,
      'VirtualService retries.attempts',
    );
  },
);

test.serial('every YAML file under deploy/ is checked by some test here', (t) => {
  const covered = new Set<string>([
    'envoy/envoy.yaml',
    'envoy/edge.yaml',
    'k8s/prometheus-adapter/values.yaml',
    'otel/collector.yaml',
  ]);
  for (const kustomization of KUSTOMIZATIONS) {
    covered.add(join(kustomization, 'kustomization.yaml'));
    const k = parseYaml(readFileSync(join(DEPLOY, kustomization, 'kustomization.yaml'), 'utf8')) as Obj;
    for (const resource of (k['resources'] ?? []) as string[])
      if (/\.ya?ml$/.test(resource)) covered.add(join(kustomization, resource));
    for (const patch of (k['patches'] ?? []) as Obj[])
      if (typeof patch['path'] === 'string') covered.add(join(kustomization, patch['path']));
  }
  const unchecked = yamlFilesUnder(DEPLOY).filter((f) => !covered.has(f));
  t.deepEqual(unchecked, [], 'add new deploy files to a kustomization or to a check in test/deploy.test.ts');
});

for (const kustomization of ['k8s/base', 'k8s/overlays/gpu'] as const) {
  test.serial(
    `${kustomization}: the ConfigMap names only real settings and the server's parser accepts them; probes, ports and grace agree with them`,
    (t) => {
      const { objects } = render(kustomization);
      const data = find(objects, 'ConfigMap', 'anpd-serve-config')['data'] as Record<string, string>;
      const knownEnv = new Set<string>(Object.values(SERVER_SETTINGS).flatMap((s) => [...s.env]));
      for (const key of Object.keys(data)) {
        if (key.startsWith('ANPD_')) t.true(knownEnv.has(key), `${key} is not a server setting (typo?)`);
        else t.regex(key, /^OTEL_/, `${key}: only ANPD_* and OTEL_* belong here`);
      }
      const deployment = find(objects, 'Deployment', 'anpd-serve');
      const pod = deployment['spec']['template']['spec'] as Obj;
      const container = pod['containers'][0] as Obj;
      const env = Object.fromEntries(
        (container['env'] as Obj[]).filter((e) => typeof e['value'] === 'string').map((e) => [e['name'], e['value']]),
      );
      const config = parseServerConfig([], { ...data, ...env });

      const grpcPort = (container['ports'] as Obj[]).find((p) => p['name'] === 'grpc')!['containerPort'] as number;
      const metricsPort = (container['ports'] as Obj[]).find((p) => p['name'] === 'metrics')![
        'containerPort'
      ] as number;
      const httpPort = (container['ports'] as Obj[]).find((p) => p['name'] === 'http')!['containerPort'] as number;
      t.is(config.port, grpcPort);
      t.is(config.metricsPort, metricsPort);
      t.is(config.httpPort, httpPort, 'the OpenAI-compatible API is on, on the container port named http');
      t.is(deployment['spec']['template']['metadata']['annotations']['prometheus.io/port'], String(metricsPort));
      for (const probe of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
        t.is(container[probe]['grpc']['port'], grpcPort, `${probe} port must be the numeric gRPC port`);
      }
      t.is(container['readinessProbe']['grpc']['service'], SERVICE);
      t.is(container['startupProbe']['grpc']['service'], SERVICE);
      t.is(container['livenessProbe']['grpc']['service'], LIVENESS_SERVICE, 'liveness must not fail while draining');
      t.true(
        container['startupProbe']['periodSeconds'] * container['startupProbe']['failureThreshold'] >= 60,
        'startup allows a minute for the model load',
      );
      // Probing slower than a start takes would hold a ready replica back from traffic.
      t.true(
        container['startupProbe']['periodSeconds'] <= STARTUP_PROBE_PERIOD_MAX_S,
        `the startup probe period is at most the ${STARTUP_PROBE_PERIOD_MAX_S} s a start takes`,
      );

      // Stateless replicas: nothing written survives the pod and no client is pinned to one, so the
      // HPA and the PDB may add and remove pods freely.
      for (const volume of (pod['volumes'] ?? []) as Obj[])
        t.truthy(volume['emptyDir'], `volume ${volume['name']}: only emptyDir (a replica keeps no state)`);
      t.is(objects.filter((o) => o['kind'] === 'PersistentVolumeClaim' || o['kind'] === 'StatefulSet').length, 0);
      for (const service of objects.filter((o) => o['kind'] === 'Service'))
        t.is(service['spec']['sessionAffinity'], 'None', `${service['metadata']['name']}: no session affinity`);

      // SIGTERM arrives after preStop; the drain then needs the grace plus 2 s to close connections.
      const preStopS = Number((container['lifecycle']['preStop']['exec']['command'] as string[])[1]);
      t.true(
        pod['terminationGracePeriodSeconds'] * 1000 >= preStopS * 1000 + config.shutdownGraceMs + 2000 + 5000,
        'terminationGracePeriodSeconds must exceed preStop + drain grace',
      );

      // One ORT thread per requested core (threads × replicas): node's core count is the node's, not the pod's.
      const cpu = Number(container['resources']['requests']['cpu']);
      t.true(
        data['ANPD_THREADS'] !== undefined && data['ANPD_ENGINE_REPLICAS'] !== undefined,
        'threads and replicas must be set explicitly',
      );
      t.is(config.intraOpThreads * config.engineReplicas, cpu);
      t.deepEqual(
        container['resources']['requests'],
        container['resources']['limits'],
        'Guaranteed QoS: requests = limits',
      );
      t.true(pod['securityContext']['runAsNonRoot']);

      const service = find(objects, 'Service', 'anpd-serve');
      const servicePort = (service['spec']['ports'] as Obj[]).find((p) => p['targetPort'] === 'grpc')!;
      t.true(
        servicePort['appProtocol'] === 'grpc' && String(servicePort['name']).startsWith('grpc'),
        'Istio needs the port named grpc* or appProtocol grpc',
      );
      const openaiPort = (service['spec']['ports'] as Obj[]).find((p) => p['targetPort'] === 'http')!;
      t.true(
        openaiPort['appProtocol'] === 'http' && String(openaiPort['name']).startsWith('http'),
        'the OpenAI port is HTTP/1.1 for the mesh (named http*, appProtocol http)',
      );
      t.deepEqual(service['spec']['selector'], deployment['spec']['selector']['matchLabels']);
      t.deepEqual(
        find(objects, 'PodDisruptionBudget')['spec']['selector']['matchLabels'],
        deployment['spec']['selector']['matchLabels'],
      );
      const hpa = find(objects, 'HorizontalPodAutoscaler');
      t.is(hpa['spec']['scaleTargetRef']['name'], deployment['metadata']['name']);
    },
  );
}

test.serial('the GPU overlay asks for a GPU, batches on CUDA and scales on queue depth only', (t) => {
  const { objects } = render('k8s/overlays/gpu');
  const container = find(objects, 'Deployment')['spec']['template']['spec']['containers'][0] as Obj;
  t.is(container['resources']['limits']['nvidia.com/gpu'], '1');
  t.regex(container['image'] as string, /-gpu$/);
  const data = find(objects, 'ConfigMap', 'anpd-serve-config')['data'] as Record<string, string>;
  const config = parseServerConfig([], data);
  t.is(config.executionProvider, 'cuda');
  t.is(config.batchSlots, 64);
  t.is(config.maxActiveSequences, config.engineReplicas * config.batchSlots, 'every place of the replica is used');
  const metrics = find(objects, 'HorizontalPodAutoscaler')['spec']['metrics'] as Obj[];
  t.deepEqual(
    metrics.map((m) => m['type']),
    ['Pods'],
  );
});

test.serial(
  'Istio: generation RPCs and OpenAI completions are never retried, have no route timeout and stay on their port; the rule targets the Service',
  async (t) => {
    const { objects } = render('istio');
    const base = render('k8s/base').objects;
    const serviceName = find(base, 'Service', 'anpd-serve')['metadata']['name'];
    const destinationRule = find(objects, 'DestinationRule');
    t.is(destinationRule['spec']['host'], serviceName);
    const virtualService = find(objects, 'VirtualService');
    t.deepEqual(virtualService['spec']['hosts'], [serviceName]);
    const routes = virtualService['spec']['http'] as Obj[];
    // The first route matching a request on a Service port, as Istio picks it.
    const routeFor = (port: number, path: string) =>
      routes.find(
        (r) =>
          r['match'] === undefined ||
          (r['match'] as Obj[]).some(
            (m) =>
              (m['port'] === undefined || m['port'] === port) &&
              (m['uri'] === undefined || path.startsWith(m['uri']['prefix'])),
          ),
      );
    const servicePorts = find(base, 'Service', 'anpd-serve')['spec']['ports'] as Obj[];
    const grpcPort = servicePorts.find((p) => p['name'] === 'grpc')!['port'] as number;
    const httpPort = servicePorts.find((p) => p['name'] === 'http-openai')!['port'] as number;
    // Every Generate* RPC in the proto and every OpenAI generation must hit a no-retry route without a timeout, on its own port.
    const proto = readFileSync(join(ROOT, 'proto/llm/v1/generation.proto'), 'utf8');
    const rpcs = [...proto.matchAll(/^\s*rpc\s+(\w+)/gm)].map((m) => m[1]!);
    t.true(rpcs.includes('GenerateBidi'));
    const generations: [number, string][] = [
      ...rpcs.filter((r) => r.startsWith('Generate')).map((rpc): [number, string] => [grpcPort, `/${SERVICE}/${rpc}`]),
      [httpPort, '/v1/chat/completions'],
      [httpPort, '/v1/completions'],
    ];
    for (const [port, path] of generations) {
      const route = routeFor(port, path);
      t.truthy(route, path);
      t.is(route!['retries']['attempts'], 0, `${path} must not be retried`);
      t.is(route!['timeout'], '0s', `${path} must have no route timeout`);
      t.is(route!['route'][0]['destination']['port']['number'], port, `${path} must stay on port ${port}`);
    }
    for (const [port, path] of [
      [grpcPort, `/${SERVICE}/ModelInfo`],
      [httpPort, '/v1/models'],
    ] as const)
      t.is(
        routeFor(port, path)?.['route'][0]['destination']['port']['number'],
        port,
        `${path} must stay on port ${port}`,
      );
    // The EnvoyFilter's patch is a partial HttpConnectionManager: check it against Envoy's protos.
    const filter = find(objects, 'EnvoyFilter');
    const typedConfig = filter['spec']['configPatches'][0]['patch']['value']['typed_config'] as Obj;
    const file = join(mkdtempSync(join(tmpdir(), 'anpd-envoy-patch-')), 'patch.json');
    writeFileSync(file, JSON.stringify(typedConfig));
    const result = await runValidator('envoy-patch', [file]);
    t.true(result.ok, result.output);
    t.true(
      parseDurationS(typedConfig['stream_idle_timeout']) >= 600,
      'stream idle timeout above the longest queue + prefill silence',
    );
  },
);

function parseDurationS(value: string): number {
  const m = /^(\d+(?:\.\d+)?)s$/.exec(value);
  if (m === null) throw new Error(`not a seconds duration: ${value}`);
  return Number(m[1]);
}

/**
 * What every Envoy file here must hold for long-lived gRPC streams: valid for Envoy, no retries,
 * no route timeout, a long stream idle timeout. Returns the parsed parts the caller checks further.
 */
async function checkStreamingEnvoy(
  t: ExecutionContext,
  path: string,
): Promise<{ text: string; config: Obj; hcm: Obj; cluster: Obj }> {
  const result = await runValidator('envoy', [path]);
  t.true(result.ok, result.output);
  const text = readFileSync(path, 'utf8');
  const config = parseYaml(text) as Obj;
  t.notRegex(JSON.stringify(config), /retry_polic/, 'no retries anywhere');
  const hcm = config['static_resources']['listeners'][0]['filter_chains'][0]['filters'][0]['typed_config'] as Obj;
  for (const vhost of hcm['route_config']['virtual_hosts'] as Obj[]) {
    for (const route of vhost['routes'] as Obj[]) t.is(route['route']['timeout'], '0s');
  }
  t.true(parseDurationS(hcm['stream_idle_timeout']) >= 600);
  const cluster = config['static_resources']['clusters'][0] as Obj;
  return { text, config, hcm, cluster };
}

test.serial(
  'Envoy sidecar example: valid for Envoy, no route timeout, no retries, gRPC health checks on the service',
  async (t) => {
    const path = join(DEPLOY, 'envoy/envoy.yaml');
    const { text, cluster } = await checkStreamingEnvoy(t, path);
    t.is(
      cluster['load_assignment']['endpoints'][0]['lb_endpoints'][0]['endpoint']['address']['socket_address'][
        'port_value'
      ],
      50051,
    );
    t.is(cluster['health_checks'][0]['grpc_health_check']['service_name'], SERVICE);
    t.truthy(
      cluster['typed_extension_protocol_options']['envoy.extensions.upstreams.http.v3.HttpProtocolOptions'][
        'explicit_http_config'
      ]['http2_protocol_options'],
    );
    const broken = join(mkdtempSync(join(tmpdir(), 'anpd-envoy-')), 'envoy.yaml');
    writeFileSync(broken, text.replace('stream_idle_timeout: 900s', 'stream_idle_timout: 900s'));
    await assertRejected(t, 'envoy', broken, /unknown field "stream_idle_timout"/, 'a typo fails');
  },
);

test.serial(
  "Envoy edge (JSON + gRPC-Web): valid for Envoy, the sidecar's stream settings, every unary and server-streaming RPC mapped",
  async (t) => {
    const path = join(DEPLOY, 'envoy/edge.yaml');
    const { text, hcm, cluster } = await checkStreamingEnvoy(t, path);
    t.is(cluster['health_checks'][0]['grpc_health_check']['service_name'], SERVICE);
    // gRPC-Web becomes gRPC before the transcoder (which passes gRPC through); the router is last.
    const filters = (hcm['http_filters'] as Obj[]).map((f) => f['name'] as string);
    t.deepEqual(filters, [
      'envoy.filters.http.cors',
      'envoy.filters.http.grpc_web',
      'envoy.filters.http.grpc_json_transcoder',
      'envoy.filters.http.router',
    ]);
    const transcoder = (hcm['http_filters'] as Obj[])[2]!['typed_config'] as Obj;
    t.deepEqual(transcoder['services'], [SERVICE]);
    // The config reads the descriptor where `npm run envoy:descriptor` writes it (relative to the repository root).
    const scripts = (
      JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> }
    ).scripts;
    const written = /^cd (\S+) && go run \.\/protoset .*-o (\S+) /.exec(scripts['envoy:descriptor'] ?? '');
    t.truthy(written, 'npm run envoy:descriptor');
    t.is(relative(ROOT, join(ROOT, written![1]!, written![2]!)), transcoder['proto_descriptor']);
    // Every rpc but GenerateBidi (the transcoder maps no bidirectional streams) has an HTTP binding.
    const proto = readFileSync(join(ROOT, 'proto/llm/v1/generation.proto'), 'utf8');
    const service = /^service TextGeneration \{([\s\S]*?)^\}/m.exec(proto)![1]!;
    const rpcs = [...service.matchAll(/^\s*rpc\s+(\w+)\([^)]*\)\s*returns\s*\([^)]*\)\s*(;|\{[^}]*\})/gm)];
    t.true(rpcs.length >= 5);
    for (const [, name, body] of rpcs) {
      if (name === 'GenerateBidi') t.is(body, ';', 'GenerateBidi has no HTTP binding');
      else
        t.regex(
          body!,
          /option \(google\.api\.http\) = \{\s*(post|get): "\/v1\//,
          `${name} has no google.api.http binding`,
        );
    }
    // The transcoder's own options are checked inside its typed_config, not just the bootstrap.
    const broken = join(mkdtempSync(join(tmpdir(), 'anpd-envoy-')), 'edge.yaml');
    writeFileSync(broken, text.replace('stream_newline_delimited: true', 'stream_newline_delimted: true'));
    await assertRejected(
      t,
      'envoy',
      broken,
      /unknown field "stream_newline_delimted"/,
      'a typo in the transcoder config fails',
    );
  },
);

test.serial('OpenTelemetry collector config: every pipeline names components that are defined', (t) => {
  const config = parseYaml(readFileSync(join(DEPLOY, 'otel/collector.yaml'), 'utf8')) as Obj;
  const pipelines = config['service']['pipelines'] as Record<string, Obj>;
  t.true(Object.keys(pipelines).length > 0);
  for (const [name, pipeline] of Object.entries(pipelines)) {
    for (const section of ['receivers', 'processors', 'exporters']) {
      for (const component of (pipeline[section] ?? []) as string[])
        t.truthy(config[section]?.[component], `${name}.${section}: ${component} is not defined`);
    }
  }
});

test.serial(
  'Dockerfile: lints clean; stages, user, ports, health check and model path agree with the deploy files',
  (t) => {
    const text = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
    t.deepEqual(
      lintDockerfile(text).map((d) => `${d.range.start.line + 1}: ${d.message}`),
      [],
    );
    // Continuation lines joined, comments dropped.
    const instructions = text
      .replace(/\\\n/g, ' ')
      .split('\n')
      .filter((l) => l.trim() !== '' && !l.trimStart().startsWith('#'));
    const stages = instructions.filter((l) => l.startsWith('FROM ')).map((l) => / AS (\S+)/i.exec(l)?.[1]);
    t.deepEqual(stages, ['build', 'model', 'deps', 'runtime-base', 'cuda-provider', 'runtime-gpu', 'runtime']);
    for (const l of instructions.filter((i) => i.includes('--from='))) {
      t.true(stages.includes(/--from=(\S+)/.exec(l)![1]), l);
    }
    for (const l of instructions.filter((i) => i.startsWith('COPY ') && !i.includes('--from='))) {
      for (const source of l
        .split(/\s+/)
        .slice(1, -1)
        .filter((s) => !s.startsWith('--')))
        t.true(existsSync(join(ROOT, source)), `COPY ${source}: no such path`);
    }
    const runtime = instructions.slice(
      instructions.findIndex((l) => / AS runtime-base/.test(l)),
      instructions.findIndex((l) => / AS cuda-provider/.test(l)),
    );
    const user = runtime.find((l) => l.startsWith('USER '))!.split(/\s+/)[1]!;
    const uid = Number(user.split(':')[0]);
    t.true(Number.isInteger(uid) && uid > 0, 'numeric non-root user (runAsNonRoot can verify it)');
    const pod = find(render('k8s/base').objects, 'Deployment')['spec']['template']['spec'] as Obj;
    t.is(pod['securityContext']['runAsUser'], uid);
    const exposed = runtime.filter((l) => l.startsWith('EXPOSE ')).flatMap((l) => l.split(/\s+/).slice(1).map(Number));
    t.deepEqual(exposed.sort(), (pod['containers'][0]['ports'] as Obj[]).map((p) => p['containerPort']).sort());
    const healthcheck = runtime.find((l) => l.startsWith('HEALTHCHECK '))!;
    t.regex(healthcheck, /"dist\/src\/cli\/main\.js", "health"/);
    const modelMove = / mv "\$dir" (\S+)/.exec(instructions.find((l) => l.includes('fetch-model'))!)![1];
    t.regex(runtime.find((l) => l.includes('ANPD_MODEL_DIR='))!, new RegExp(`ANPD_MODEL_DIR=${modelMove}\\b`));
    t.regex(text, /ARG ORT_NODE_INSTALL=skip/);
    // The GPU target: CUDA 13's runtime base, the CUDA provider installed by our script, the paged
    // graph the model stage converts, batching on, the same non-root user, ports and health check.
    const gpu = instructions.slice(
      instructions.findIndex((l) => / AS runtime-gpu/.test(l)),
      instructions.findIndex((l) => / AS runtime$/.test(l)),
    );
    const gpuText = gpu.join('\n');
    t.regex(text, /ARG CUDA_IMAGE=nvidia\/cuda:13\.\S+-runtime-/);
    t.regex(gpu[0]!, /^FROM \$\{CUDA_IMAGE\} AS runtime-gpu/);
    const provider = instructions.slice(
      instructions.findIndex((l) => / AS cuda-provider/.test(l)),
      instructions.findIndex((l) => / AS runtime-gpu/.test(l)),
    );
    t.true(provider.some((l) => l.startsWith('RUN ') && l.includes('node scripts/install-cuda-provider.mjs')));
    t.regex(gpuText, /COPY --from=cuda-provider \/app\/node_modules/);
    t.is(gpu.filter((l) => l.startsWith('USER ')).at(-1), `USER ${user}`);
    t.deepEqual(
      gpu
        .filter((l) => l.startsWith('EXPOSE '))
        .flatMap((l) => l.split(/\s+/).slice(1).map(Number))
        .sort(),
      exposed,
    );
    t.regex(gpu.find((l) => l.startsWith('HEALTHCHECK '))!, /"dist\/src\/cli\/main\.js", "health"/);
    const pagedMove = / mv "\$paged" (\S+)/.exec(instructions.find((l) => l.includes('--attention paged'))!)![1];
    t.regex(gpuText, new RegExp(`ANPD_MODEL_DIR=${pagedMove}\\b`));
    t.regex(gpuText, new RegExp(`COPY --from=model ${pagedMove} ${pagedMove}`));
    const env = parseServerConfig(
      [],
      Object.fromEntries([...gpuText.matchAll(/\b(ANPD_[A-Z_]+)=(\S+)/g)].map((m) => [m[1]!, m[2]!])),
    );
    t.is(env.executionProvider, 'cuda');
    t.true(env.batchSlots >= 16, 'the GPU image batches (continuous batching on CUDA)');
    t.regex(gpuText, /NVIDIA_DRIVER_CAPABILITIES=compute,utility/);
  },
);

/** Production dependencies only: what `npm ci --omit=dev` installs in the image. */
function productionDependencies(): Set<string> {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
  return new Set(Object.keys(pkg.dependencies));
}

test.serial('the image runs from what it ships: dist/src imports only production dependencies', (t) => {
  const allowed = productionDependencies();
  const files = readdirSync(join(ROOT, 'dist/src'), { recursive: true, withFileTypes: true }).filter(
    (e) => e.isFile() && e.name.endsWith('.js'),
  );
  t.true(files.length > 20);
  for (const file of files) {
    const source = readFileSync(join(file.parentPath, file.name), 'utf8');
    for (const m of source.matchAll(
      /(?:^|\n)\s*(?:import|export)[^'"]*?from\s*['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)/g,
    )) {
      const specifier = (m[1] ?? m[2])!;
      if (specifier.startsWith('.') || specifier.startsWith('node:')) continue;
      const name = specifier.startsWith('@') ? specifier.split('/').slice(0, 2).join('/') : specifier.split('/')[0]!;
      t.true(
        allowed.has(name),
        `${relative(ROOT, join(file.parentPath, file.name))} imports ${specifier}, not a production dependency`,
      );
    }
  }
});

test.serial(
  "the image's file set boots with the base ConfigMap; health answers through the CLI, /v1/models over HTTP; /metrics has the autoscaler's series",
  async (t) => {
    // The runtime stage: package.json, proto/, dist/src/, node_modules (production), the model.
    const app = mkdtempSync(join(tmpdir(), 'anpd-image-'));
    cpSync(join(ROOT, 'package.json'), join(app, 'package.json'));
    cpSync(join(ROOT, 'proto'), join(app, 'proto'), { recursive: true });
    mkdirSync(join(app, 'dist'));
    cpSync(join(ROOT, 'dist/src'), join(app, 'dist/src'), { recursive: true });
    symlinkSync(join(ROOT, 'node_modules'), join(app, 'node_modules'));
    const { objects } = render('k8s/base');
    const data = find(objects, 'ConfigMap', 'anpd-serve-config')['data'] as Record<string, string>;
    const [grpcPort, metricsPort, httpPort] = [await freePort(), await freePort(), await freePort()];
    t.not(data['ANPD_HTTP_PORT'], undefined, 'the base turns the OpenAI-compatible API on');
    const env = {
      PATH: process.env['PATH'] ?? '',
      HOME: app,
      ...data,
      ANPD_HOST: '127.0.0.1',
      ANPD_PORT: String(grpcPort),
      ANPD_METRICS_HOST: '127.0.0.1',
      ANPD_METRICS_PORT: String(metricsPort),
      ANPD_HTTP_PORT: String(httpPort),
      ANPD_MODEL_DIR: await defaultModelDir(),
      ANPD_MODEL_NAME: 'smollm2-135m-instruct', // as the Dockerfile sets it
      ANPD_CACHE_DIR: join(app, 'cache'),
    };
    const cli = join(app, 'dist/src/cli/main.js');
    const child: ChildProcess = spawn(process.execPath, [cli, 'serve'], {
      cwd: app,
      env,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    const logs: string[] = [];
    try {
      await new Promise<void>((resolve, reject) => {
        createInterface({ input: child.stderr! }).on('line', (line) => {
          logs.push(line);
          if (line.includes('gRPC server listening')) resolve();
        });
        child.once('exit', (code) => reject(new Error(`server exited with ${code}: ${logs.join('\n')}`)));
      });
      const health = await execFileAsync(process.execPath, [cli, 'health'], { cwd: app, env, encoding: 'utf8' });
      t.is(health.stdout.trim(), 'SERVING');
      const liveness = await execFileAsync(process.execPath, [cli, 'health', '--service', LIVENESS_SERVICE], {
        cwd: app,
        env,
        encoding: 'utf8',
      });
      t.is(liveness.stdout.trim(), 'SERVING');
      const models = (await (await fetch(`http://127.0.0.1:${httpPort}/v1/models`)).json()) as {
        data: { id: string }[];
      };
      t.deepEqual(
        models.data.map((m) => m.id),
        ['smollm2-135m-instruct'],
      );
      const adapter = parseYaml(readFileSync(join(DEPLOY, 'k8s/prometheus-adapter/values.yaml'), 'utf8')) as Obj;
      const rule = adapter['rules']['custom'][0] as Obj;
      const series = /^(\w+)\{/.exec(rule['seriesQuery'] as string)![1]!;
      const hpaMetric = (find(objects, 'HorizontalPodAutoscaler')['spec']['metrics'] as Obj[]).find(
        (m) => m['type'] === 'Pods',
      )!['pods']['metric']['name'];
      t.is(rule['name']['as'], hpaMetric, 'the adapter serves the metric the HPA asks for');
      t.true(new RegExp(rule['name']['matches'] as string).test(series));
      const body = await fetchMetricsText(metricsPort);
      t.regex(body, new RegExp(`^# TYPE ${series} gauge$`, 'm'), `the server exports ${series}`);
    } finally {
      child.kill('SIGTERM');
      await new Promise((resolve) => (child.exitCode !== null ? resolve(null) : child.once('exit', resolve)));
      rmSync(app, { recursive: true, force: true });
    }
  },
);
