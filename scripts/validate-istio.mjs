// Validates the Istio resources of deploy/examples/istio offline, against the schemas Istio
// publishes for its CRDs (as compiled by @kubernetes-models/istio, from Istio 1.29's
// crd-all.gen.yaml) — types, enums, required fields — and refuses any field name those schemas
// do not know (Kubernetes would silently prune it: a typo in `provider` would turn the CUSTOM
// policy into one that names no provider). IstioOperator's meshConfig is free-form in its CRD, so
// the extension providers are checked against the fields of istio.mesh.v1alpha1's
// MeshConfig.ExtensionProvider messages listed below.
//
//   node scripts/validate-istio.mjs FILE...   (scripts/validate-k8s.sh installs the packages)
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";
import { AuthorizationPolicy } from "@kubernetes-models/istio/security.istio.io/v1/AuthorizationPolicy";
import { ServiceEntry } from "@kubernetes-models/istio/networking.istio.io/v1/ServiceEntry";
import { Telemetry } from "@kubernetes-models/istio/telemetry.istio.io/v1/Telemetry";
import { IstioOperator } from "@kubernetes-models/istio/install.istio.io/v1alpha1/IstioOperator";

// The compiled schemas sit beside the models (the package does not export them by name).
const schemas = new URL(
  "../../_schemas/",
  import.meta.resolve("@kubernetes-models/istio/security.istio.io/v1/AuthorizationPolicy"),
);
const schemaText = (name) => readFileSync(new URL(`${name}.js`, schemas), "utf8");

const kinds = {
  "security.istio.io/v1 AuthorizationPolicy": [AuthorizationPolicy, "SecurityIstioIoV1AuthorizationPolicy"],
  "networking.istio.io/v1 ServiceEntry": [ServiceEntry, "NetworkingIstioIoV1ServiceEntry"],
  "telemetry.istio.io/v1 Telemetry": [Telemetry, "TelemetryIstioIoV1Telemetry"],
  "install.istio.io/v1alpha1 IstioOperator": [IstioOperator, "InstallIstioIoV1alpha1IstioOperator"],
};

// MeshConfig.ExtensionProvider (istio.mesh.v1alpha1), the providers these examples use: field
// → nested fields (null: a scalar or a free-form map).
const requestBody = { maxRequestBytes: null, allowPartialMessage: null, packAsBytes: null };
const providers = {
  envoyExtAuthzGrpc: {
    service: null, port: null, timeout: null, failOpen: null, statusOnError: null,
    includeRequestBodyInCheck: requestBody,
  },
  envoyExtAuthzHttp: {
    service: null, port: null, timeout: null, pathPrefix: null, failOpen: null,
    statusOnError: null, includeRequestHeadersInCheck: null, includeAdditionalHeadersInCheck: null,
    includeRequestBodyInCheck: requestBody, headersToUpstreamOnAllow: null,
    headersToDownstreamOnDeny: null, headersToDownstreamOnAllow: null,
  },
  envoyFileAccessLog: { path: null, logFormat: { text: null, labels: null } },
};

// Maps whose keys are the user's (labels, selectors), not schema fields.
const freeForm = new Set(["labels", "annotations", "matchLabels"]);

let failures = 0;
const fail = (where, message) => {
  console.error(`${where}: ${message}`);
  failures += 1;
};

function knownKeys(value, path, known, where) {
  if (Array.isArray(value)) {
    value.forEach((item, i) => knownKeys(item, `${path}[${i}]`, known, where));
  } else if (value !== null && typeof value === "object") {
    for (const [key, inner] of Object.entries(value)) {
      if (!known.has(key)) fail(where, `${path}.${key} is not a field of this kind`);
      if (!freeForm.has(key)) knownKeys(inner, `${path}.${key}`, known, where);
    }
  }
}

function againstFields(value, fields, path, where) {
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    fail(where, `${path} must be an object`);
    return;
  }
  for (const [key, inner] of Object.entries(value)) {
    if (!(key in fields)) fail(where, `${path}.${key} is not a field of ${path}`);
    else if (fields[key] !== null) againstFields(inner, fields[key], `${path}.${key}`, where);
  }
}

function meshConfig(spec, where) {
  const list = spec?.meshConfig?.extensionProviders ?? [];
  list.forEach((provider, i) => {
    const path = `spec.meshConfig.extensionProviders[${i}]`;
    const { name, ...kind } = provider;
    if (typeof name !== "string" || name === "") fail(where, `${path}.name is required`);
    const kindNames = Object.keys(kind);
    if (kindNames.length !== 1) fail(where, `${path} must set exactly one provider kind`);
    for (const k of kindNames) {
      if (!(k in providers)) fail(where, `${path}.${k} is not a provider kind checked here`);
      else againstFields(kind[k], providers[k], `${path}.${k}`, where);
    }
    const grpc = kind.envoyExtAuthzGrpc;
    if (grpc && (typeof grpc.service !== "string" || !Number.isInteger(grpc.port))) {
      fail(where, `${path}.envoyExtAuthzGrpc needs service and port`);
    }
  });
}

let checked = 0;
for (const file of process.argv.slice(2)) {
  const docs = parseAllDocuments(readFileSync(file, "utf8"));
  docs.forEach((doc, index) => {
    const where = `${file}#${index}`;
    if (doc.errors.length > 0) {
      fail(where, doc.errors.map((e) => e.message).join("; "));
      return;
    }
    const object = doc.toJS();
    if (object === null) return;
    const entry = kinds[`${object.apiVersion} ${object.kind}`];
    if (!entry) return; // Kubernetes kinds: kubernetes-validate checks those.
    const [Model, schema] = entry;
    const before = failures;
    try {
      new Model(object).validate();
    } catch (error) {
      fail(where, error.message);
    }
    if (object.kind === "IstioOperator") {
      meshConfig(object.spec, where);
    } else {
      const known = new Set([...schemaText(schema).matchAll(/"([A-Za-z0-9_]+)"/g)].map((m) => m[1]));
      knownKeys(object.spec, "spec", known, where);
    }
    checked += 1;
    if (failures === before) console.log(`ok: ${where} ${object.kind} ${object.metadata?.name ?? ""}`);
  });
}
if (checked === 0) fail("validate-istio", "no Istio resources found");
process.exit(failures === 0 ? 0 : 1);
