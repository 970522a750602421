"""Cluster deployment assets: KubeRay manifests and the Ray cluster-launcher config (rendered from
``configs/`` by :mod:`cluster.render`), and :mod:`cluster.local_cluster`, a two-node Ray cluster on
one machine for development and the cluster tests."""
