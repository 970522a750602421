"""Render the cluster manifests from the production Serve config, so they cannot drift from it.

    python -m cluster.render            # rewrite cluster/*.yaml from configs/
    python -m cluster.render --check    # exit 1 if a committed file differs from what it renders to

What is derived from ``configs/qwen2.5-vl-72b-awq-tp4.yaml`` (and nothing is hand-copied):

* ``serveConfigV2`` of each RayService: the config file's text, verbatim (comments included);
* the GPU worker group: GPUs per pod = engine replicas per pod x TP x PP; the Ray CPUs each GPU pod
  advertises = replicas per pod x the CPUs of one engine placement group
  (:func:`serve_app.engine.placement.engine_placement`), so a pod fits exactly its engine replicas'
  STRICT_PACK groups and nothing else; min/max pods from the Engine deployment's autoscaling bounds;
* the CPU worker group's min/max pods from the Ingress and Preprocessor autoscaling bounds and
  their ``num_cpus``;
* the launcher's node types from the same numbers.

Variants (``VARIANTS``): 4-GPU pods with one TP=4 engine replica each, and 8-GPU pods holding two
TP=4 replicas each. Both embed the same Serve config: the 72B AWQ fits in four GPUs, so on 8-GPU
nodes two TP=4 replicas give about twice the throughput of one TP=8 replica (which only buys lower
per-request latency at the cost of more all-reduce traffic). For TP=8, write a Serve config with
``tensor_parallel_size: 8`` and add a variant that points at it.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import string
import sys
from dataclasses import dataclass
from typing import Any

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python cluster/render.py` as well as `python -m cluster.render`
    sys.path.insert(0, str(ROOT))

from serve_app.app_config import parse_app_config  # noqa: E402
from serve_app.engine.placement import engine_placement  # noqa: E402
from serve_app.ray_env import THROUGHPUT_ENV  # noqa: E402

RAY_VERSION = "2.60.0"  # the Ray of requirements/cpu.lock; the image must run the same version
IMAGE = "registry.example.com/qwen-vl-serve:0.1.0-ray2.60.0"  # see docs/cluster.md: build and push it
SERVE_CONFIG = "configs/qwen2.5-vl-72b-awq-tp4.yaml"
MODELS_PVC = "qwen2-5-vl-72b-awq-weights"  # ReadOnlyMany PVC holding /models/Qwen2.5-VL-72B-Instruct-AWQ
CPU_POD = {"cpu": 16, "memory": "64Gi"}
HEAD_POD = {"cpu": 4, "memory": "16Gi"}
CPU_GROUP_IDLE_S = 120
GPU_GROUP_IDLE_S = 900  # GPU pods take minutes to come back (image pull, 40 GB of weights)
AUTOSCALER_IDLE_S = 300
# engine.cache_dir of the Serve config (compile/JIT caches) lives on each GPU node's local disk:
# a node that ran an engine once starts the next one warm (docs/cluster.md, "Compile and JIT caches").
ENGINE_CACHE_HOST = "/mnt/serve-app-engine-cache"
RAY_UID_GID = "1000:100"  # the rayproject/ray images' `ray` user


@dataclass(frozen=True)
class GpuPod:
    gpus: int
    cpu: int  # Kubernetes CPU request/limit (vLLM's own threads live here; Ray sees fewer, below)
    memory: str
    shm: str
    example_nodes: str


@dataclass(frozen=True)
class Variant:
    path: str
    name: str
    gpu_pod: GpuPod
    serve_config: str = SERVE_CONFIG


VARIANTS = [
    Variant("cluster/rayservice-qwen2.5-vl-72b-awq-tp4.yaml", "qwen-vl-72b-awq",
            GpuPod(gpus=4, cpu=40, memory="300Gi", shm="64Gi",
                   example_nodes="4x H100/A100 80GB or 4x L40S 48GB, e.g. GKE a3-highgpu-4g, AWS g6e.12xlarge")),
    Variant("cluster/rayservice-qwen2.5-vl-72b-awq-2xtp4-8gpu.yaml", "qwen-vl-72b-awq-8gpu",
            GpuPod(gpus=8, cpu=80, memory="600Gi", shm="128Gi",
                   example_nodes="8x H100/A100 80GB, e.g. GKE a3-highgpu-8g, AWS p5.48xlarge / p4de.24xlarge")),
]
LAUNCHER = "cluster/ray-cluster-aws.yaml"


# ----------------------------------------------------------------------------- derived numbers
@dataclass(frozen=True)
class Sizing:
    serve_text: str
    world_size: int
    engine_bundles: list[dict[str, float]]
    engine_strategy: str
    engine_cpus: float  # CPUs of one engine replica's placement group
    engine_min: int
    engine_max: int
    cpu_min_demand: float  # Ingress + Preprocessor CPUs at min_replicas
    cpu_max_demand: float  # ... at max_replicas
    model_path: str
    engine_cache_dir: str | None = None


def _fmt(x: float) -> str:
    return f"{x:g}"


def sizing(serve_config: str = SERVE_CONFIG) -> Sizing:
    text = (ROOT / serve_config).read_text()
    raw = yaml.safe_load(text)
    (app,) = raw["applications"]
    cfg = parse_app_config(app["args"])
    placement = engine_placement(cfg.engine)
    deployments = {d["name"]: d for d in app["deployments"]}
    eng = deployments["Engine"]["autoscaling_config"]
    cpu_min = cpu_max = 0.0
    for name in ("Ingress", "Preprocessor"):
        d = deployments[name]
        cpus = float((d.get("ray_actor_options") or {}).get("num_cpus", 1))
        cpu_min += cpus * d["autoscaling_config"]["min_replicas"]
        cpu_max += cpus * d["autoscaling_config"]["max_replicas"]
    return Sizing(
        serve_text=text, world_size=cfg.engine.world_size, engine_bundles=placement.bundles,
        engine_strategy=placement.strategy, engine_cpus=sum(b.get("CPU", 0) for b in placement.bundles),
        engine_min=eng["min_replicas"], engine_max=eng["max_replicas"],
        cpu_min_demand=cpu_min, cpu_max_demand=cpu_max, model_path=cfg.model.path,
        engine_cache_dir=cfg.engine.cache_dir,
    )


def gpu_group_numbers(s: Sizing, pod: GpuPod) -> dict[str, int | float]:
    if pod.gpus % s.world_size:
        raise ValueError(f"{pod.gpus} GPUs per pod do not hold whole engine replicas of {s.world_size} GPUs")
    per_pod = pod.gpus // s.world_size
    return {
        "engines_per_pod": per_pod,
        "ray_cpus": s.engine_cpus * per_pod,
        "min": max(1, math.ceil(s.engine_min / per_pod)),
        "max": math.ceil(s.engine_max / per_pod),
    }


def cpu_group_numbers(s: Sizing) -> dict[str, int]:
    return {"min": max(1, math.ceil(s.cpu_min_demand / CPU_POD["cpu"])),
            "max": max(1, math.ceil(s.cpu_max_demand / CPU_POD["cpu"]))}


# ----------------------------------------------------------------------------- RayService
_RAYSERVICE = string.Template("""\
# GENERATED by `python -m cluster.render` from $serve_config -- edit those, then re-render.
#
# KubeRay RayService: Qwen2.5-VL-72B-Instruct-AWQ behind an OpenAI-compatible API (Ray Serve).
#   kubectl apply -f $path
#   kubectl get rayservice $name          # Ready when the Serve app is RUNNING
#   curl http://$name-serve-svc:8000/v1/models
#
# Groups:
#   head   Ray GCS, dashboard/Jobs API (8265), Serve controller and the autoscaler sidecar.
#          rayStartParams num-cpus "0" / num-gpus "0": no Serve replica, task or actor is ever
#          scheduled here (KubeRay's recommendation), and it is left out of the serve Service.
#   cpu    Ingress (HTTP) and Preprocessor (chat template + media decode) replicas. Scales
#          $cpu_min..$cpu_max pods on the Ingress/Preprocessor autoscaling bounds.
#   gpu    Engine replicas: $engines_per_pod x TP=$world_size vLLM engine(s) per pod, each in a $strategy
#          placement group of $world_size GPU bundles $bundles
#          -> $gpus GPUs per pod; Ray CPUs per pod = $engines_per_pod x $engine_cpus (the groups' CPUs, exactly,
#          so the groups always fit and nothing else takes their CPUs). Scales $gpu_min..$gpu_max pods
#          for Engine min_replicas..max_replicas = $engine_min..$engine_max. Nodes: $example_nodes.
#
# Model weights: PVC "$pvc" (ReadOnlyMany: NFS/Filestore/EFS/Lustre, or a
# pre-populated disk snapshot), mounted read-only at /models on the cpu group (tokenizer and chat
# template for preprocessing) and the gpu group (weights). It must hold $model_path.
#
$engine_cache_comment# Serve's high-throughput mode (serve_app/ray_env.py) is on in every container: each pod's :8000 is
# HAProxy forwarding straight to the Ingress replicas' own HTTP servers (no Python proxy hop), and
# replicas talk gRPC except where the app asks for object-store references (media).
#
# Probes: none are set here on purpose. KubeRay injects readiness/liveness probes into every Ray
# container (raylet/GCS health) and, for RayService workers, a readiness probe on the Serve proxy
# (http://localhost:8000/-/healthz): a pod with no Serve proxy on it stays NotReady and out of the
# serve Service while staying alive. Overriding them would fight the operator.
apiVersion: ray.io/v1
kind: RayService
metadata:
  name: $name
  labels:
    app.kubernetes.io/name: qwen-vl-serve
    app.kubernetes.io/component: $name
spec:
  # Zero-downtime cluster upgrades start a second RayCluster: make sure the GPU quota allows it,
  # or set type: None and accept downtime for changes to rayClusterConfig.
  upgradeStrategy:
    type: NewCluster
  # Traffic goes to worker pods' Serve proxies only (the head serves nothing).
  excludeHeadPodFromServeSvc: true
  serveConfigV2: |
$serve_config_block
  rayClusterConfig:
    rayVersion: "$ray_version"
    enableInTreeAutoscaling: true
    autoscalerOptions:
      version: v2
      upscalingMode: Default
      # Default idle time before a worker pod is removed; the groups below set their own.
      idleTimeoutSeconds: $autoscaler_idle
      resources:
        limits: {cpu: "500m", memory: 1Gi}
        requests: {cpu: "500m", memory: 1Gi}
    headGroupSpec:
      rayStartParams:
        num-cpus: "0"
        num-gpus: "0"
        dashboard-host: "0.0.0.0"
      template:
        metadata:
          labels:
            app.kubernetes.io/name: qwen-vl-serve
        spec:
          containers:
            - name: ray-head
              image: $image
              imagePullPolicy: IfNotPresent
              env: $ray_env
              ports:
                - {containerPort: 6379, name: gcs-server}
                - {containerPort: 8265, name: dashboard}
                - {containerPort: 10001, name: client}
                - {containerPort: 8000, name: serve}
                - {containerPort: 8080, name: metrics}  # Ray's metrics export port (cluster/monitoring/podmonitor.yaml)
              resources:
                limits: {cpu: "$head_cpu", memory: $head_memory}
                requests: {cpu: "$head_cpu", memory: $head_memory}
    workerGroupSpecs:
      - groupName: cpu
        replicas: $cpu_min
        minReplicas: $cpu_min
        maxReplicas: $cpu_max
        idleTimeoutSeconds: $cpu_idle
        rayStartParams: {}
        template:
          metadata:
            labels:
              app.kubernetes.io/name: qwen-vl-serve
          spec:
            containers:
              - name: ray-worker
                image: $image
                imagePullPolicy: IfNotPresent
                env: $ray_env
                ports:
                  - {containerPort: 8000, name: serve}
                  - {containerPort: 8080, name: metrics}  # Ray's metrics export port (cluster/monitoring/podmonitor.yaml)
                resources:
                  limits: {cpu: "$cpu_pod_cpu", memory: $cpu_pod_memory}
                  requests: {cpu: "$cpu_pod_cpu", memory: $cpu_pod_memory}
                volumeMounts:
                  - {name: models, mountPath: /models, readOnly: true}
            volumes:
              - name: models
                persistentVolumeClaim: {claimName: $pvc, readOnly: true}
      - groupName: gpu
        replicas: $gpu_min
        minReplicas: $gpu_min
        maxReplicas: $gpu_max
        idleTimeoutSeconds: $gpu_idle
        rayStartParams:
          num-cpus: "$gpu_ray_cpus"
          num-gpus: "$gpus"
        template:
          metadata:
            labels:
              app.kubernetes.io/name: qwen-vl-serve
          spec:
            # Engine replicas drain for up to graceful_shutdown_timeout_s (120 s) on scale-down.
            terminationGracePeriodSeconds: 180
$gpu_init_containers            containers:
              - name: ray-worker
                image: $image
                imagePullPolicy: IfNotPresent
                env: $ray_env
                ports:
                  - {containerPort: 8000, name: serve}
                  - {containerPort: 8080, name: metrics}  # Ray's metrics export port (cluster/monitoring/podmonitor.yaml)
                resources:
                  limits: {cpu: "$gpu_pod_cpu", memory: $gpu_pod_memory, nvidia.com/gpu: "$gpus"}
                  requests: {cpu: "$gpu_pod_cpu", memory: $gpu_pod_memory, nvidia.com/gpu: "$gpus"}
                volumeMounts:
                  - {name: models, mountPath: /models, readOnly: true}
                  - {name: dshm, mountPath: /dev/shm}
$gpu_cache_mount            volumes:
              - name: models
                persistentVolumeClaim: {claimName: $pvc, readOnly: true}
$gpu_cache_volume              # NCCL (tensor parallelism) needs far more shared memory than the container default.
              - name: dshm
                emptyDir: {medium: Memory, sizeLimit: $shm}
            tolerations:
              - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
""")


def _k8s_env() -> str:
    """serve_app.ray_env.THROUGHPUT_ENV as a flow-style container env list."""
    return "[" + ", ".join(f'{{name: {k}, value: "{v}"}}' for k, v in THROUGHPUT_ENV.items()) + "]"


def _shell_env() -> str:
    return " ".join(f"{k}={v}" for k, v in THROUGHPUT_ENV.items())


def engine_cache_parts(cache_dir: str | None) -> dict[str, str]:
    """The gpu group's pieces for ``engine.cache_dir``: a hostPath of the node at that path, made
    writable for the image's user by an init container (hostPath directories are created root-owned)."""
    if not cache_dir:
        return dict.fromkeys(("engine_cache_comment", "gpu_init_containers", "gpu_cache_mount", "gpu_cache_volume"), "")
    return {
        "engine_cache_comment": (
            f"# Engine compile/JIT caches (engine.cache_dir {cache_dir}): hostPath {ENGINE_CACHE_HOST} of each gpu\n"
            "# node, so an engine replica on a node that ran one before starts warm. Keyed by vLLM/torch/CUDA/\n"
            "# Python/GPU inside (serve_app/engine/cache_env.py): a new image never loads stale kernels. Fill it\n"
            "# before traffic: ray job submit -- python -m serve_app warmup <serve config>.\n#\n"),
        "gpu_init_containers": (
            "            initContainers:\n"
            "              # hostPath directories are created root-owned; the image runs as `ray`.\n"
            "              - name: cache-owner\n"
            f"                image: {IMAGE}\n"
            f"                command: [sh, -c, \"chown {RAY_UID_GID} {cache_dir}\"]\n"
            "                securityContext: {runAsUser: 0}\n"
            "                resources:\n"
            "                  limits: {cpu: 100m, memory: 64Mi}\n"
            "                  requests: {cpu: 100m, memory: 64Mi}\n"
            "                volumeMounts:\n"
            f"                  - {{name: engine-cache, mountPath: {cache_dir}}}\n"),
        "gpu_cache_mount": f"                  - {{name: engine-cache, mountPath: {cache_dir}}}\n",
        "gpu_cache_volume": (
            "              # Compile/JIT caches: node-local disk (see the header).\n"
            "              - name: engine-cache\n"
            f"                hostPath: {{path: {ENGINE_CACHE_HOST}, type: DirectoryOrCreate}}\n"),
    }


def render_rayservice(v: Variant) -> str:
    s = sizing(v.serve_config)
    g = gpu_group_numbers(s, v.gpu_pod)
    c = cpu_group_numbers(s)
    block = "\n".join(("    " + line) if line.strip() else "" for line in s.serve_text.rstrip("\n").split("\n"))
    return _RAYSERVICE.substitute(
        serve_config=v.serve_config, path=v.path, name=v.name, serve_config_block=block,
        ray_version=RAY_VERSION, image=IMAGE, pvc=MODELS_PVC, model_path=s.model_path,
        world_size=s.world_size, strategy=s.engine_strategy, bundles=_bundles(s.engine_bundles),
        engine_cpus=_fmt(s.engine_cpus), engines_per_pod=g["engines_per_pod"], gpus=v.gpu_pod.gpus,
        gpu_min=g["min"], gpu_max=g["max"], engine_min=s.engine_min, engine_max=s.engine_max,
        gpu_ray_cpus=_fmt(g["ray_cpus"]), gpu_pod_cpu=v.gpu_pod.cpu, gpu_pod_memory=v.gpu_pod.memory,
        shm=v.gpu_pod.shm, example_nodes=v.gpu_pod.example_nodes,
        cpu_min=c["min"], cpu_max=c["max"], cpu_pod_cpu=CPU_POD["cpu"], cpu_pod_memory=CPU_POD["memory"],
        head_cpu=HEAD_POD["cpu"], head_memory=HEAD_POD["memory"],
        cpu_idle=CPU_GROUP_IDLE_S, gpu_idle=GPU_GROUP_IDLE_S, autoscaler_idle=AUTOSCALER_IDLE_S,
        ray_env=_k8s_env(), **engine_cache_parts(s.engine_cache_dir),
    )


def _bundles(bundles: list[dict[str, float]]) -> str:
    return "[" + ", ".join("{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in b.items()) + "}" for b in bundles) + "]"


# ----------------------------------------------------------------------------- cluster launcher (AWS)
_LAUNCHER = string.Template("""\
# GENERATED by `python -m cluster.render` from $serve_config -- edit those, then re-render.
#
# Ray cluster launcher config (VMs on AWS) with the RayService's node types:
#   ray up cluster/ray-cluster-aws.yaml
#   ray dashboard cluster/ray-cluster-aws.yaml        # forwards 8265 (serve deploy, ray job submit)
#   serve deploy $serve_config --address http://127.0.0.1:8265
#   ray down cluster/ray-cluster-aws.yaml
# Replace before use: the AMI (an NVIDIA driver + Docker AMI, e.g. the AWS Deep Learning Base GPU AMI
# for the region), the image, and the EFS file system holding /models/Qwen2.5-VL-72B-Instruct-AWQ.
cluster_name: qwen-vl-72b-awq
max_workers: $max_workers
upscaling_speed: 1.0
idle_timeout_minutes: $idle_minutes

provider:
  type: aws
  region: us-west-2
  cache_stopped_nodes: false

auth:
  ssh_user: ubuntu

# Every node runs the same image as the RayService (Ray $ray_version, serve_app, vLLM).
docker:
  image: $image
  container_name: ray_container
  pull_before_run: true
  run_options:
    - --ulimit nofile=65536:65536
    - --shm-size=64g
    - -v /models:/models:ro
$launcher_cache_mount
# Model weights: a shared file system mounted read-only at /models on every node (outside Docker,
# before it starts; the container sees it through -v /models:/models:ro above).
initialization_commands:
  - sudo mkdir -p /models
  - mountpoint -q /models || sudo mount -t nfs4 -o ro,nfsvers=4.1 fs-00000000000000000.efs.us-west-2.amazonaws.com:/ /models
$launcher_cache_init
head_node_type: head
available_node_types:
  # Head: GCS, dashboard/Jobs API, Serve controller, autoscaler. CPU 0: nothing is scheduled here.
  head:
    resources: {CPU: 0}
    node_config:
      InstanceType: m7i.2xlarge
      ImageId: ami-00000000000000000
      BlockDeviceMappings:
        - {DeviceName: /dev/sda1, Ebs: {VolumeSize: 200, VolumeType: gp3}}
  # Ingress and Preprocessor replicas.
  cpu:
    min_workers: $cpu_min
    max_workers: $cpu_max
    resources: {CPU: $cpu_pod_cpu}
    node_config:
      InstanceType: m7i.4xlarge
      ImageId: ami-00000000000000000
      BlockDeviceMappings:
        - {DeviceName: /dev/sda1, Ebs: {VolumeSize: 200, VolumeType: gp3}}
  # Engine replicas: $engines_per_pod x TP=$world_size ($strategy $bundles) per node.
  # Ray CPUs = exactly the placement group's CPUs (the instance has more, for vLLM's threads).
  gpu:
    min_workers: $gpu_min
    max_workers: $gpu_max
    resources: {CPU: $gpu_ray_cpus, GPU: $gpus}
    node_config:
      InstanceType: g6e.12xlarge
      ImageId: ami-00000000000000000
      BlockDeviceMappings:
        - {DeviceName: /dev/sda1, Ebs: {VolumeSize: 500, VolumeType: gp3}}

setup_commands: []

head_start_ray_commands:
  - ray stop
  - ulimit -n 65536; export $ray_env; ray start --head --port=6379 --num-cpus=0 --dashboard-host=0.0.0.0 --disable-usage-stats --autoscaling-config=~/ray_bootstrap_config.yaml

worker_start_ray_commands:
  - ray stop
  - ulimit -n 65536; export $ray_env; ray start --address=$$RAY_HEAD_IP:6379 --disable-usage-stats
""")


def render_launcher() -> str:
    s = sizing(SERVE_CONFIG)
    pod = VARIANTS[0].gpu_pod  # g6e.12xlarge: 4 GPUs, one TP=4 replica per node
    g = gpu_group_numbers(s, pod)
    c = cpu_group_numbers(s)
    return _LAUNCHER.substitute(
        serve_config=SERVE_CONFIG, image=IMAGE, ray_version=RAY_VERSION,
        max_workers=c["max"] + g["max"], idle_minutes=GPU_GROUP_IDLE_S // 60,
        cpu_min=c["min"], cpu_max=c["max"], cpu_pod_cpu=CPU_POD["cpu"],
        gpu_min=g["min"], gpu_max=g["max"], gpu_ray_cpus=int(g["ray_cpus"]), gpus=pod.gpus,
        engines_per_pod=g["engines_per_pod"], world_size=s.world_size, strategy=s.engine_strategy,
        bundles=_bundles(s.engine_bundles), ray_env=_shell_env(),
        launcher_cache_mount=(f"    - -v {ENGINE_CACHE_HOST}:{s.engine_cache_dir}  # engine.cache_dir: compile/JIT caches\n"
                              if s.engine_cache_dir else ""),
        launcher_cache_init=(f"  - sudo mkdir -p {ENGINE_CACHE_HOST} && sudo chown {RAY_UID_GID} {ENGINE_CACHE_HOST}\n"
                             if s.engine_cache_dir else ""),
    )


# ----------------------------------------------------------------------------- CLI
def rendered() -> dict[str, str]:
    out = {v.path: render_rayservice(v) for v in VARIANTS}
    out[LAUNCHER] = render_launcher()
    from cluster import monitoring

    out.update(monitoring.rendered())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.render", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only compare; exit 1 if a file is missing or differs")
    args = p.parse_args(argv)
    stale = []
    for rel, text in rendered().items():
        path = ROOT / rel
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(rel)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {rel}")
    if args.check and stale:
        print("out of date (run `python -m cluster.render`): " + ", ".join(stale), file=sys.stderr)
        return 1
    if not stale:
        print("up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
