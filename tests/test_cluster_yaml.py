import yaml


def test_cluster_yaml_passes_rays_launcher_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load(open("cluster.yaml"))
    validate_config(prepare_config(cfg))  # raises on any schema error
    assert cfg["available_node_types"]["head"]["resources"]["GPU"] == 0
    assert cfg["available_node_types"]["gpu_worker"]["resources"]["GPU"] > 0
    assert any("[gpu]" in c for c in cfg["setup_commands"])


def test_every_node_runs_with_the_same_auth_token():
    """Ray 2.60 heads refuse unauthenticated job submissions: head and workers start in token mode with the
    token `ray up` copies from the submitting machine (where `ray job submit` reads it)."""
    cfg = yaml.safe_load(open("cluster.yaml"))
    assert cfg["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cfg[key] if "ray start" in c]
        assert starts and all(c.startswith("RAY_AUTH_MODE=token ") for c in starts), key
