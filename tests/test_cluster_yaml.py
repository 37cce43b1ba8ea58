import yaml


def test_cluster_yaml_passes_rays_launcher_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load(open("cluster.yaml"))
    validate_config(prepare_config(cfg))  # raises on any schema error
    assert cfg["available_node_types"]["head"]["resources"]["GPU"] == 0
    assert cfg["available_node_types"]["gpu_worker"]["resources"]["GPU"] > 0
    assert any("[gpu]" in c for c in cfg["setup_commands"])
