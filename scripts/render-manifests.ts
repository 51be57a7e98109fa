/**
 * Writes deploy/base, deploy/overlays and istio/ from the one place that declares the mesh:
 * services/kit/catalog.ts (services, ports, call graph). The objects are built with the
 * kubernetes-models and @kubernetes-models/istio classes, so the TypeScript compiler rejects an
 * unknown field and `validate()` checks values before anything is written.
 *
 *   npx tsx scripts/render-manifests.ts          # rewrite the YAML
 *   npx tsx scripts/render-manifests.ts --check  # exit 1 when the committed YAML differs
 *
 * test/deploy/manifests.test.ts renders the kustomizations and validates what kubectl would see.
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { AnalysisTemplate } from "@kubernetes-models/argo-rollouts/argoproj.io/v1alpha1/AnalysisTemplate";
import { Rollout } from "@kubernetes-models/argo-rollouts/argoproj.io/v1alpha1/Rollout";
import { DestinationRule } from "@kubernetes-models/istio/networking.istio.io/v1beta1/DestinationRule";
import { VirtualService } from "@kubernetes-models/istio/networking.istio.io/v1beta1/VirtualService";
import { AuthorizationPolicy } from "@kubernetes-models/istio/security.istio.io/v1beta1/AuthorizationPolicy";
import { PeerAuthentication } from "@kubernetes-models/istio/security.istio.io/v1beta1/PeerAuthentication";
import { RequestAuthentication } from "@kubernetes-models/istio/security.istio.io/v1beta1/RequestAuthentication";
import { Deployment } from "kubernetes-models/apps/v1/Deployment";
import { HorizontalPodAutoscaler } from "kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler";
import { ConfigMap } from "kubernetes-models/v1/ConfigMap";
import { Namespace } from "kubernetes-models/v1/Namespace";
import { Secret } from "kubernetes-models/v1/Secret";
import { Service } from "kubernetes-models/v1/Service";
import { ServiceAccount } from "kubernetes-models/v1/ServiceAccount";
import { NetworkPolicy } from "kubernetes-models/networking.k8s.io/v1/NetworkPolicy";
import { PodDisruptionBudget } from "kubernetes-models/policy/v1/PodDisruptionBudget";
import { stringify } from "yaml";
import { CALL_GRAPH, DEFAULT_PORTS, SERVICE_NAMES, type ServiceName } from "../services/kit/catalog.js";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const NAMESPACE = "orca";
const IMAGE = "ghcr.io/orca-mesh/orca";
const TRUST_DOMAIN = "cluster.local";

const workload = (name: ServiceName) => `orca-${name}`;
const principal = (name: ServiceName) => `${TRUST_DOMAIN}/ns/${NAMESPACE}/sa/${workload(name)}`;
const labels = (name: ServiceName) => ({ "app.kubernetes.io/name": workload(name), "app.kubernetes.io/part-of": "orca", app: workload(name) });
const selector = (name: ServiceName) => ({ "app.kubernetes.io/name": workload(name) });

/** Who calls `name`, from the call graph. */
export function callersOf(name: ServiceName): ServiceName[] {
  return SERVICE_NAMES.filter((caller) => caller !== name && CALL_GRAPH[caller].includes(name));
}

/**
 * Every environment variable the services read, with the value the cluster uses. Empty values
 * mean "unset" to the config reader (so TLS stays off: Istio's mTLS protects the wire).
 */
export function clusterEnvironment(): Record<string, string> {
  const env: Record<string, string> = {
    ORCA_HOST: "0.0.0.0",
    LOG_LEVEL: "info",
    ORCA_DATA_DIR: "/tmp/orca-data",
    ORCA_SHUTDOWN_GRACE_MS: "20000",
    ORCA_MAX_MESSAGE_BYTES: "4194304",
    ORCA_CLIENT_TIMEOUT_MS: "5000",
    ORCA_GRPC_FAST_PATH: "1",
    ORCA_CLIENT_FAST_PATH: "1",
    ORCA_TLS_CERT_FILE: "",
    ORCA_TLS_KEY_FILE: "",
    ORCA_TLS_CLIENT_CA_FILE: "",
    ORCA_TLS_ALLOWED_SANS: "",
    OTEL_EXPORTER_OTLP_ENDPOINT: "http://otel-collector.observability:4318",
    ORCA_AUTH: "on",
    ORCA_TRUST_XFCC: "1",
    ORCA_JWT_ISSUER: "https://auth.example.com/",
    ORCA_JWT_AUDIENCE: "orca",
    ORCA_JWT_JWKS_URL: "https://auth.example.com/.well-known/jwks.json",
    ORCA_JWT_PUBLIC_KEY_FILE: "",
    ORCA_JWT_ALGORITHMS: "RS256,ES256",
    ORCA_JWT_CLOCK_TOLERANCE_S: "30",
    ORCA_RATE_LIMIT_RPS: "100",
    ORCA_RATE_LIMIT_BURST: "200",
    ORCA_MAX_STREAM_SECONDS: "3600",
    ORCA_EVENT_RETENTION_MS: "2592000000",
  };
  Object.assign(env, SERVICE_SETTINGS);
  for (const name of SERVICE_NAMES) {
    const upper = name.toUpperCase();
    env[`ORCA_${upper}_PORT`] = String(DEFAULT_PORTS[name].grpc);
    env[`ORCA_${upper}_ADMIN_PORT`] = String(DEFAULT_PORTS[name].admin);
    env[`ORCA_${upper}_URL`] = `http://${workload(name)}.${NAMESPACE}.svc.cluster.local:${DEFAULT_PORTS[name].grpc}`;
  }
  return env;
}

/** Each service's own settings, at their documented defaults (README, per service). */
const SERVICE_SETTINGS: Record<string, string> = {
  // Lock (services/lock/config.ts)
  ORCA_LOCK_MAX_TTL_MS: "3600000",
  ORCA_LOCK_DEFAULT_TTL_MS: "30000",
  ORCA_LOCK_MAX_WAIT_MS: "600000",
  ORCA_LOCK_MAX_QUEUE: "1000",
  ORCA_LOCK_AGING_INTERVAL_MS: "100",
  ORCA_LOCK_MAX_RESOURCE_BYTES: "256",
  ORCA_LOCK_REAPER_INTERVAL_MS: "1000",
  ORCA_LOCK_MAX_WATCHERS: "1000",
  ORCA_LOCK_WAITER_POLL_MS: "1000",
  ORCA_LOCK_LEASE_RETENTION_MS: "86400000",
  // Cache (services/cache/config.ts); empty = unset
  ORCA_CACHE_L1_MAX_BYTES: "67108864",
  ORCA_CACHE_MAX_VALUE_BYTES: "1048576",
  ORCA_CACHE_MAX_TTL_MS: "2592000000",
  ORCA_CACHE_DEFAULT_TTL_MS: "3600000",
  ORCA_CACHE_STALE_WHILE_REVALIDATE_MS: "0",
  ORCA_CACHE_STALE_IF_ERROR_MS: "300000",
  ORCA_CACHE_NAMESPACE_POLICIES: "",
  ORCA_CACHE_L2_TIMEOUT_MS: "50",
  ORCA_CACHE_L3_TIMEOUT_MS: "1000",
  ORCA_CACHE_PURGE_INTERVAL_MS: "60000",
  ORCA_CACHE_REDIS_PREFIX: "orca:cache:",
  ORCA_CACHE_MAX_WATCH_STREAMS: "1000",
  // Monitor (services/monitor/config.ts)
  ORCA_MONITOR_PROBE_INTERVAL_MS: "10000",
  ORCA_MONITOR_MIN_INTERVAL_MS: "1000",
  ORCA_MONITOR_PROBE_TIMEOUT_MS: "5000",
  ORCA_MONITOR_BUILTIN_TARGETS: "1",
  ORCA_MONITOR_EWMA_FAST_ALPHA: "0.3",
  ORCA_MONITOR_EWMA_SLOW_ALPHA: "0.05",
  ORCA_MONITOR_WARMUP_SAMPLES: "30",
  ORCA_MONITOR_LATENCY_STDDEV_FLOOR_MS: "1",
  ORCA_MONITOR_ERROR_RATE_STDDEV_FLOOR: "0.01",
  ORCA_MONITOR_WEBHOOK_TIMEOUT_MS: "10000",
  ORCA_MONITOR_WEBHOOK_BACKOFF_MS: "1000",
  ORCA_MONITOR_WEBHOOK_BACKOFF_MAX_MS: "300000",
  ORCA_MONITOR_WEBHOOK_MAX_ATTEMPTS: "8",
  ORCA_MONITOR_TICK_MS: "1000",
  ORCA_MONITOR_SAMPLE_RETENTION_MS: "86400000",
  ORCA_MONITOR_HISTORY_RETENTION_MS: "2592000000",
  ORCA_MONITOR_MAX_TARGETS: "1000",
  ORCA_MONITOR_MAX_RULES: "1000",
  ORCA_MONITOR_MAX_SILENCES: "1000",
  ORCA_MONITOR_WATCH_MAX_MS: "1800000",
  ORCA_MONITOR_WATCH_BUFFER: "1000",
  ORCA_MONITOR_RECOVERY_BACKOFF_MS: "5000",
  // Orchestrator (services/orchestrator/config.ts); empty = unset / none allowed
  ORCA_ORCHESTRATOR_REPLICA: "",
  ORCA_ORCHESTRATOR_MAX_CONCURRENCY: "64",
  ORCA_ORCHESTRATOR_PLUGIN_CONCURRENCY: "http=32,grpc=32,shell=4,sql=8",
  ORCA_ORCHESTRATOR_QUEUE_CONCURRENCY: "100",
  ORCA_ORCHESTRATOR_POLL_INTERVAL_MS: "500",
  ORCA_ORCHESTRATOR_MAINTENANCE_INTERVAL_MS: "500",
  ORCA_ORCHESTRATOR_ABORT_GRACE_MS: "10000",
  ORCA_ORCHESTRATOR_HTTP_ALLOWED_HOSTS: "",
  ORCA_ORCHESTRATOR_GRPC_ALLOWED_TARGETS: "",
  ORCA_ORCHESTRATOR_SHELL_ALLOWED_COMMANDS: "",
  ORCA_ORCHESTRATOR_SHELL_MAX_OUTPUT_BYTES: "65536",
  ORCA_ORCHESTRATOR_SQL_DATABASES: "",
  ORCA_ORCHESTRATOR_SQL_STATEMENT_TIMEOUT_MS: "10000",
  ORCA_ORCHESTRATOR_POLICY_BUNDLE: "default",
  ORCA_ORCHESTRATOR_CACHE_NAMESPACE: "orchestrator.results",
  ORCA_ORCHESTRATOR_MAX_TASKS: "1000",
  ORCA_ORCHESTRATOR_WATCH_MAX_MS: "3600000",
  // Scheduler (services/scheduler/config.ts)
  ORCA_SCHEDULER_MIN_INTERVAL_MS: "1000",
  ORCA_SCHEDULER_LEADER_TTL_MS: "10000",
  ORCA_SCHEDULER_LATE_THRESHOLD_MS: "5000",
  ORCA_SCHEDULER_POLL_MS: "1000",
  ORCA_SCHEDULER_MAX_BUFFERED: "100",
  ORCA_SCHEDULER_EVENT_DEDUP_MS: "86400000",
  ORCA_SCHEDULER_MAX_PAYLOAD_BYTES: "262144",
  ORCA_SCHEDULER_MAX_SCHEDULES_PER_TENANT: "100000",
  ORCA_SCHEDULER_MAX_TRIGGERS_PER_TENANT: "10000",
  ORCA_SCHEDULER_DISPATCH_CONCURRENCY: "64",
  ORCA_SCHEDULER_MAX_MISSED_RECORDS: "1000",
  ORCA_SCHEDULER_RETRY_MS: "2000",
  ORCA_SCHEDULER_FIRING_RETENTION_MS: "2592000000",
  // Policy (services/policy/config.ts); empty = unset
  ORCA_POLICY_DIR: "",
  ORCA_POLICY_DIR_DEBOUNCE_MS: "200",
  ORCA_POLICY_SENSITIVE_FIELDS: "ip,client_ip,context.ip,context.client_ip,token,password,authorization",
  ORCA_POLICY_CACHE_MAX_ENTRIES: "10000",
  ORCA_POLICY_CACHE_TTL_MS: "60000",
  ORCA_POLICY_MAX_INPUT_BYTES: "65536",
  ORCA_POLICY_MAX_BUNDLE_BYTES: "4194304",
  ORCA_POLICY_LOAD_DEFAULTS: "1",
  ORCA_POLICY_SHADOW_FLUSH_MS: "1000",
  ORCA_POLICY_BENCHMARK_BUDGET_MS: "10000",
  ORCA_POLICY_REPLICA: "",
};

/** Variables that carry credentials live in a Secret, not the ConfigMap. */
export const SECRET_VARIABLES = ["DATABASE_URL", "REDIS_URL"] as const;

function base(): Record<string, unknown[]> {
  const files: Record<string, unknown[]> = {};
  files["namespace.yaml"] = [new Namespace({ metadata: { name: NAMESPACE, labels: { "istio-injection": "enabled" } } })];
  files["config.yaml"] = [
    new ConfigMap({ metadata: { name: "orca-config" }, data: clusterEnvironment() }),
    new Secret({
      metadata: { name: "orca-secrets", annotations: { "orca.dev/note": "placeholder values; overlays replace them" } },
      type: "Opaque",
      stringData: {
        DATABASE_URL: "postgres://orca:change-me@orca-postgres:5432/orca",
        REDIS_URL: "redis://orca-redis:6379",
      },
    }),
  ];
  for (const name of SERVICE_NAMES) {
    const ports = DEFAULT_PORTS[name];
    const callers = callersOf(name);
    files[`${name}.yaml`] = [
      new ServiceAccount({ metadata: { name: workload(name), labels: labels(name) } }),
      new Deployment({
        metadata: { name: workload(name), labels: labels(name) },
        spec: {
          replicas: 2,
          selector: { matchLabels: selector(name) },
          strategy: { type: "RollingUpdate", rollingUpdate: { maxUnavailable: 0, maxSurge: 1 } },
          template: {
            metadata: {
              labels: { ...labels(name), version: "stable" },
              annotations: {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": String(ports.admin),
                "prometheus.io/path": "/metrics",
                // Let in-flight calls finish through the sidecar while the app drains.
                "proxy.istio.io/config": JSON.stringify({ terminationDrainDuration: "25s" }),
              },
            },
            spec: {
              serviceAccountName: workload(name),
              // Covers ORCA_SHUTDOWN_GRACE_MS (20 s) plus the preStop delay.
              terminationGracePeriodSeconds: 30,
              securityContext: { runAsNonRoot: true, runAsUser: 10001, runAsGroup: 10001, fsGroup: 10001, seccompProfile: { type: "RuntimeDefault" } },
              containers: [
                {
                  name: "orca",
                  image: `${IMAGE}:latest`,
                  imagePullPolicy: "IfNotPresent",
                  args: ["serve", name],
                  ports: [
                    { name: "grpc", containerPort: ports.grpc, protocol: "TCP" },
                    { name: "http-admin", containerPort: ports.admin, protocol: "TCP" },
                  ],
                  envFrom: [{ configMapRef: { name: "orca-config" } }, { secretRef: { name: "orca-secrets" } }],
                  readinessProbe: { grpc: { port: ports.grpc, service: "" }, periodSeconds: 5, failureThreshold: 2 },
                  livenessProbe: { httpGet: { path: "/healthz", port: ports.admin }, periodSeconds: 10, failureThreshold: 3 },
                  startupProbe: { grpc: { port: ports.grpc, service: "" }, periodSeconds: 2, failureThreshold: 30 },
                  lifecycle: { preStop: { exec: { command: ["sleep", "3"] } } },
                  resources: { requests: { cpu: "100m", memory: "128Mi" }, limits: { memory: "512Mi" } },
                  securityContext: { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ["ALL"] } },
                  volumeMounts: [{ name: "tmp", mountPath: "/tmp" }],
                },
              ],
              volumes: [{ name: "tmp", emptyDir: {} }],
            },
          },
        },
      }),
      new Service({
        metadata: { name: workload(name), labels: labels(name) },
        spec: {
          selector: selector(name),
          ports: [
            { name: "grpc", port: ports.grpc, targetPort: "grpc", appProtocol: "grpc" },
            { name: "http-admin", port: ports.admin, targetPort: "http-admin", appProtocol: "http" },
          ],
        },
      }),
      new HorizontalPodAutoscaler({
        metadata: { name: workload(name), labels: labels(name) },
        spec: {
          scaleTargetRef: { apiVersion: "apps/v1", kind: "Deployment", name: workload(name) },
          minReplicas: 2,
          maxReplicas: 10,
          metrics: [{ type: "Resource", resource: { name: "cpu", target: { type: "Utilization", averageUtilization: 70 } } }],
        },
      }),
      new PodDisruptionBudget({
        metadata: { name: workload(name), labels: labels(name) },
        spec: { minAvailable: 1, selector: { matchLabels: selector(name) } },
      }),
      new NetworkPolicy({
        metadata: { name: workload(name), labels: labels(name) },
        spec: {
          podSelector: { matchLabels: selector(name) },
          policyTypes: ["Ingress"],
          ingress: [
            // The service port: only its callers in the call graph (Istio checks identities too).
            ...(callers.length > 0
              ? [{ from: callers.map((caller) => ({ podSelector: { matchLabels: selector(caller) } })), ports: [{ port: ports.grpc, protocol: "TCP" as const }] }]
              : []),
            // Kubelet probes and Prometheus scrape the admin port; the gateway reaches the
            // user-facing services.
            { from: [{ namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "monitoring" } } }], ports: [{ port: ports.admin, protocol: "TCP" as const }] },
            { from: [{ namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "istio-system" } } }], ports: [{ port: ports.grpc, protocol: "TCP" as const }] },
          ],
        },
      }),
    ];
  }
  return files;
}

function istio(): Record<string, unknown[]> {
  const files: Record<string, unknown[]> = {};
  files["peer-authentication.yaml"] = [
    new PeerAuthentication({ metadata: { name: "default", namespace: NAMESPACE }, spec: { mtls: { mode: "STRICT" } } }),
  ];
  const policies: unknown[] = [
    // An ALLOW-nothing policy on the namespace: only the ALLOW rules below admit traffic.
    new AuthorizationPolicy({ metadata: { name: "default-deny", namespace: NAMESPACE }, spec: {} }),
  ];
  for (const name of SERVICE_NAMES) {
    const callers = callersOf(name);
    const rules = [
      ...(callers.length > 0 ? [{ from: [{ source: { principals: callers.map(principal) } }], to: [{ operation: { ports: [String(DEFAULT_PORTS[name].grpc)] } }] }] : []),
      // End users come through the ingress gateway with a verified JWT.
      {
        from: [{ source: { principals: [`${TRUST_DOMAIN}/ns/istio-system/sa/istio-ingressgateway-service-account`], requestPrincipals: ["*"] } }],
        to: [{ operation: { ports: [String(DEFAULT_PORTS[name].grpc)] } }],
      },
      // Probes and scrapes on the admin port (kubelet probes are rewritten by the sidecar).
      { to: [{ operation: { ports: [String(DEFAULT_PORTS[name].admin)], methods: ["GET"] } }] },
    ];
    policies.push(
      new AuthorizationPolicy({
        metadata: { name: workload(name), namespace: NAMESPACE, labels: { "orca.dev/callers": callers.join(".") || "none" } },
        spec: { selector: { matchLabels: selector(name) }, action: "ALLOW", rules },
      }),
    );
  }
  files["authorization-policies.yaml"] = policies;
  files["request-authentication.yaml"] = [
    new RequestAuthentication({
      metadata: { name: "orca-end-users", namespace: "istio-system" },
      spec: {
        selector: { matchLabels: { istio: "ingressgateway" } },
        jwtRules: [{ issuer: "https://auth.example.com/", audiences: ["orca"], jwksUri: "https://auth.example.com/.well-known/jwks.json", forwardOriginalToken: true }],
      },
    }),
  ];
  files["traffic.yaml"] = SERVICE_NAMES.flatMap((name) => [
    new DestinationRule({
      metadata: { name: workload(name), namespace: NAMESPACE },
      spec: {
        host: `${workload(name)}.${NAMESPACE}.svc.cluster.local`,
        trafficPolicy: {
          tls: { mode: "ISTIO_MUTUAL" },
          connectionPool: { http: { http2MaxRequests: 1000, maxRequestsPerConnection: 0, h2UpgradePolicy: "UPGRADE" }, tcp: { maxConnections: 100 } },
          outlierDetection: { consecutive5xxErrors: 5, consecutiveGatewayErrors: 5, interval: "10s", baseEjectionTime: "30s", maxEjectionPercent: 50 },
        },
        subsets: [
          { name: "stable", labels: { version: "stable" } },
          { name: "canary", labels: { version: "canary" } },
        ],
      },
    }),
    new VirtualService({
      metadata: { name: workload(name), namespace: NAMESPACE },
      spec: {
        hosts: [`${workload(name)}.${NAMESPACE}.svc.cluster.local`],
        http: [
          {
            name: "primary",
            route: [
              { destination: { host: `${workload(name)}.${NAMESPACE}.svc.cluster.local`, subset: "stable" }, weight: 100 },
              { destination: { host: `${workload(name)}.${NAMESPACE}.svc.cluster.local`, subset: "canary" }, weight: 0 },
            ],
            retries: { attempts: 2, perTryTimeout: "2s", retryOn: "unavailable,resource-exhausted" },
          },
        ],
      },
    }),
  ]);
  files["canary.yaml"] = [
    new AnalysisTemplate({
      metadata: { name: "orca-slo", namespace: NAMESPACE },
      spec: {
        args: [{ name: "service" }, { name: "prometheus", value: "http://prometheus.monitoring:9090" }],
        metrics: [
          {
            name: "error-rate",
            interval: "1m",
            failureLimit: 1,
            successCondition: "len(result) == 0 || result[0] <= 0.01",
            provider: {
              prometheus: {
                address: "{{args.prometheus}}",
                query:
                  'sum(rate(grpc_server_handled_total{orca_service="{{args.service}}",grpc_code=~"Unknown|Internal|Unavailable|DeadlineExceeded|DataLoss"}[2m])) / sum(rate(grpc_server_handled_total{orca_service="{{args.service}}"}[2m]))',
              },
            },
          },
          {
            name: "p99-latency",
            interval: "1m",
            failureLimit: 1,
            successCondition: "len(result) == 0 || result[0] <= 0.25",
            provider: {
              prometheus: {
                address: "{{args.prometheus}}",
                query: 'histogram_quantile(0.99, sum by (le) (rate(grpc_server_handling_seconds_bucket{orca_service="{{args.service}}",grpc_type="unary"}[2m])))',
              },
            },
          },
        ],
      },
    }),
    ...SERVICE_NAMES.map(
      (name) =>
        new Rollout({
          metadata: { name: workload(name), namespace: NAMESPACE },
          spec: {
            replicas: 2,
            selector: { matchLabels: selector(name) },
            // The Deployment in deploy/ stays the template; Argo Rollouts scales it down and owns the pods.
            workloadRef: { apiVersion: "apps/v1", kind: "Deployment", name: workload(name) },
            strategy: {
              canary: {
                canaryMetadata: { labels: { version: "canary" } },
                stableMetadata: { labels: { version: "stable" } },
                trafficRouting: {
                  istio: {
                    virtualService: { name: workload(name), routes: ["primary"] },
                    destinationRule: { name: workload(name), canarySubsetName: "canary", stableSubsetName: "stable" },
                  },
                },
                analysis: { templates: [{ templateName: "orca-slo" }], args: [{ name: "service", value: name }], startingStep: 1 },
                steps: [{ setWeight: 10 }, { pause: { duration: "5m" } }, { setWeight: 50 }, { pause: { duration: "10m" } }, { setWeight: 100 }],
              },
            },
          },
        }),
    ),
  ];
  return files;
}

function kustomization(resources: string[], extra: Record<string, unknown> = {}): string {
  return stringify({ apiVersion: "kustomize.config.k8s.io/v1beta1", kind: "Kustomization", ...extra, resources });
}

function toYaml(objects: unknown[]): string {
  return objects
    .map((object) => {
      (object as { validate(): void }).validate();
      return stringify(JSON.parse(JSON.stringify(object)), { lineWidth: 0 });
    })
    .join("---\n");
}

export function renderAll(): Record<string, string> {
  const out: Record<string, string> = {};
  const header = "# Generated by scripts/render-manifests.ts from services/kit/catalog.ts; do not edit by hand.\n";
  const baseFiles = base();
  for (const [file, objects] of Object.entries(baseFiles)) out[`deploy/base/${file}`] = header + toYaml(objects);
  out["deploy/base/kustomization.yaml"] = header + kustomization(Object.keys(baseFiles), { namespace: NAMESPACE });
  const istioFiles = istio();
  for (const [file, objects] of Object.entries(istioFiles)) out[`istio/${file}`] = header + toYaml(objects);
  out["istio/kustomization.yaml"] = header + kustomization(Object.keys(istioFiles));
  return out;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const check = process.argv.includes("--check");
  let stale = 0;
  for (const [path, content] of Object.entries(renderAll())) {
    const full = join(ROOT, path);
    let current = "";
    try {
      current = readFileSync(full, "utf8");
    } catch {
      // new file
    }
    if (current === content) continue;
    if (check) {
      console.error(`stale: ${path}`);
      stale++;
    } else {
      mkdirSync(dirname(full), { recursive: true });
      writeFileSync(full, content);
      console.log(`wrote ${path}`);
    }
  }
  if (stale > 0) {
    console.error("run: npx tsx scripts/render-manifests.ts");
    process.exit(1);
  }
}
