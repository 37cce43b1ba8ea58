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


def stage_args(ds) -> list[dict]:
    """The Ray resource requests of every stage in a dataset's plan."""
    def walk(op):
        for parent in op.input_dependencies:
            yield from walk(parent)
        yield getattr(op, "ray_remote_args", None) or {}

    return list(walk(ds._logical_plan.dag))


def test_cpu_only_steps_ask_for_no_gpu_and_the_cluster_has_cpu_nodes_for_them(ray_driver, assets):
    """dedup, quality without CLAP and export start CPU workers, never a GPU node."""
    import pyarrow as pa

    from jobs import dedup, export, quality, runner
    from operators import config

    types = yaml.safe_load(open("cluster.yaml"))["available_node_types"]
    assert any(name != "head" and t["resources"].get("GPU") == 0 and t["resources"].get("CPU", 0) > 0
               for name, t in types.items())
    cfg = config.load("configs/quality.yaml", [], input=".cache/dedup/manifest.jsonl", output="out/gpu-check")
    ds = ray_driver.data.from_arrow(pa.table({"x": [1]}))
    for job, extra in ((quality.JOB, {}), (export.JOB, {}), (dedup.JOB, {"assignment": None}), (dedup.IDENTIFY, {})):
        built = job.build(ds, cfg, None, {}, column="caption", **extra)
        if job.checks:
            built = runner.checks(built, cfg, "caption", None, config.quality_rules(cfg))
        args = stage_args(built)
        assert len(args) >= 2 and not any(a.get("num_gpus") for a in args), (job, args)
