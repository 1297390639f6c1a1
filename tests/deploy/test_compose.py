"""docker-compose.yml (+ the GPU override) checked without a Docker engine.

Environment variables are checked against the services' settings classes, read at
test time, so the files and the code cannot drift apart silently.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from typing import Any

import pytest
from pydantic import ValidationError

from tests.deploy.deployfiles import (
    COMPOSE_BUILTINS,
    COMPOSE_FILE,
    ENV_EXAMPLE,
    GPU_COMPOSE_FILE,
    REPO,
    InterpolationError,
    command_words,
    dockerfile_instructions,
    environment,
    interpolate,
    interpolate_tree,
    load_yaml,
    merge_services,
    python_modules,
    read_env_file,
    settings_classes,
    settings_env_names,
    strings_in,
    variables,
)

# Variables any Python service may get besides its settings class's own.
GLOBAL_VARIABLES = {"HF_HUB_OFFLINE", "MNIST_DIR"}
APP_STATE_DIR = "/app/var"  # the image's writable state directory (owned by the app user)


def _example_env() -> dict[str, str]:
    values, _ = read_env_file(ENV_EXAMPLE)
    return values


def _config(*files: Any) -> dict[str, Any]:
    """The files merged as Compose would, interpolated with .env.example's values."""
    merged = load_yaml(files[0])
    for path in files[1:]:
        override = load_yaml(path)
        merged["services"] = merge_services(merged["services"], override["services"])
    return dict(interpolate_tree(merged, _example_env()))


CONFIGS = {"cpu": (COMPOSE_FILE,), "gpu": (COMPOSE_FILE, GPU_COMPOSE_FILE)}


@pytest.fixture(params=sorted(CONFIGS))
def config(request: pytest.FixtureRequest) -> dict[str, Any]:
    return _config(*CONFIGS[request.param])


def _services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(config["services"])


def _entry_module(service: dict[str, Any]) -> str | None:
    modules = python_modules(service.get("command"))
    return modules[0] if modules else None


def test_compose_files_parse_and_define_the_stack() -> None:
    services = _services(load_yaml(COMPOSE_FILE))
    assert {"qdrant", "encoder", "indexer", "gateway", "trainer"} <= set(services)
    gpu = load_yaml(GPU_COMPOSE_FILE)
    assert set(gpu["services"]) <= set(services), "the GPU file may only override existing services"


def test_every_variable_is_documented_in_env_example() -> None:
    values, documented = read_env_file(ENV_EXAMPLE)
    used = set()
    for path in (COMPOSE_FILE, GPU_COMPOSE_FILE):
        for text in strings_in(load_yaml(path)):
            used |= variables(text)
    known = set(values) | documented
    assert used - known == set(), "compose variables missing from .env.example"
    assert known - used - COMPOSE_BUILTINS == set(), ".env.example documents variables nothing reads"


def test_required_secrets_fail_clearly_without_env_file() -> None:
    with pytest.raises(InterpolationError, match=r"API_KEY: set \w+ in \.env"):
        interpolate_tree(load_yaml(COMPOSE_FILE), {})


def test_api_keys_are_on() -> None:
    services = _services(_config(COMPOSE_FILE))
    for service, variable in [
        ("gateway", "GATEWAY_API_KEY"),
        ("encoder", "ENCODER_API_KEY"),
        ("gateway", "GATEWAY_ENCODER_API_KEY"),
        ("indexer", "INDEXER_ENCODER_API_KEY"),
        ("gateway", "GATEWAY_QDRANT_API_KEY"),
        ("indexer", "INDEXER_QDRANT_API_KEY"),
        ("qdrant", "QDRANT__SERVICE__API_KEY"),
    ]:
        assert environment(services[service].get("environment"))[variable], f"{service}: {variable}"
    raw = load_yaml(COMPOSE_FILE)["services"]
    for service, variable in [("encoder", "ENCODER_API_KEY"), ("gateway", "GATEWAY_API_KEY")]:
        assert ":?" in str(environment(raw[service]["environment"])[variable]), "a key must be required"


def test_environment_matches_settings_classes(
    config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, service in _services(config).items():
        env = environment(service.get("environment"))
        module = _entry_module(service)
        if module is None:  # a third-party image (qdrant): its own QDRANT__ namespace
            assert all(var.startswith("QDRANT__") for var in env), name
            continue
        classes = settings_classes(module)
        allowed = set(GLOBAL_VARIABLES)
        for cls in classes:
            allowed |= settings_env_names(cls)
        unknown = {var for var in env if var.upper() not in allowed}
        assert unknown == set(), f"{name}: no settings field reads {sorted(unknown)}"
        # The values must also validate: build each settings class from exactly this environment.
        for cls in classes:
            prefix = str(cls.model_config.get("env_prefix", ""))
            for var in list(os.environ):
                if var.upper().startswith(prefix.upper()) or var.upper() in allowed:
                    monkeypatch.delenv(var)
            for var, value in env.items():
                if value is not None:
                    monkeypatch.setenv(var, value)
            try:
                cls()
            except ValidationError as exc:
                pytest.fail(f"{name}: {cls.__name__} rejects the compose environment: {exc}")


def test_service_modules_exist(config: dict[str, Any]) -> None:
    for name, service in _services(config).items():
        modules = python_modules(service.get("command"))
        modules += python_modules(service.get("healthcheck", {}).get("test"))
        if "image" in service and "build" not in service:
            continue
        assert modules, f"{name}: runs no `python -m` module"
        for module in modules:
            spec = importlib.util.find_spec(module)
            assert spec is not None, f"{name}: module {module} not found"
            if spec.submodule_search_locations is not None:  # `python -m package` runs its __main__
                assert importlib.util.find_spec(f"{module}.__main__"), f"{name}: {module} has no __main__"


def test_depends_on_targets_exist_and_conditions_hold(config: dict[str, Any]) -> None:
    services = _services(config)
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: use the long depends_on form with conditions"
        for target, spec in depends.items():
            assert target in services, f"{name} depends on unknown service {target}"
            dependency = services[target]
            condition = spec.get("condition", "service_started")
            if condition == "service_healthy":
                test = dependency.get("healthcheck", {}).get("test")
                assert test, f"{name} waits for {target} healthy, which has no healthcheck"
                assert test != ["NONE"], f"{name} waits for {target} healthy, whose healthcheck is off"
            if condition == "service_completed_successfully":
                assert dependency.get("restart") == "no", f"{target} must be a one-shot job"
            own_profiles = set(service.get("profiles", []))
            if spec.get("required", True):
                assert set(dependency.get("profiles", [])) <= own_profiles, (
                    f"{name} requires {target}, which is off unless its profile is on"
                )


def test_one_shot_jobs_do_not_restart(config: dict[str, Any]) -> None:
    services = _services(config)
    for job in ("indexer", "trainer"):
        assert services[job].get("restart") == "no", job
    assert "train" in services["trainer"].get("profiles", [])
    assert services["encoder"]["depends_on"]["trainer"] == {
        "condition": "service_completed_successfully",
        "required": False,
    }


def test_the_trainer_writes_the_checkpoint_the_encoder_serves(config: dict[str, Any]) -> None:
    services = _services(config)
    served = services["encoder"]["environment"]["ENCODER_CHECKPOINT"]
    script = " ".join(services["trainer"]["command"])
    assert f"--output {served}" in script, (served, script)
    assert f"[ -f {served}/config.json ]" in script, "a second start must not distil again"


def test_volumes_are_declared_and_under_the_state_dir(config: dict[str, Any]) -> None:
    declared = set(config.get("volumes") or {})
    used = set()
    for name, service in _services(config).items():
        for volume in service.get("volumes", []):
            assert isinstance(volume, str), f"{name}: use the short volume syntax"
            source, target, *mode = volume.split(":")
            assert set(mode) <= {"ro", "rw"}, volume
            if not source.startswith((".", "/", "~")):
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
            if _entry_module(service) is not None:
                assert target.startswith(APP_STATE_DIR + "/"), f"{name}: {target} is not writable state"
    assert declared == used, f"declared but unused volumes: {sorted(declared - used)}"
    encoder_mounts = _services(config)["encoder"]["volumes"]
    assert any(v.endswith(":/app/var/checkpoints:ro") for v in encoder_mounts), "checkpoint must be read-only"


def test_ports_are_consistent_with_settings(config: dict[str, Any]) -> None:
    published: list[str] = []
    for name, service in _services(config).items():
        env = environment(service.get("environment"))
        configured = {value for var, value in env.items() if var.endswith("_PORT") and value}
        container_ports = [str(p) for p in service.get("expose", [])]
        for mapping in service.get("ports", []):
            *host, container = str(mapping).split(":")
            container_ports.append(container)
            published.append(":".join(host))
        if _entry_module(service) is not None:
            assert set(container_ports) <= configured, (
                f"{name}: ports {container_ports} vs settings {configured}"
            )
    assert len(published) == len(set(published)), f"a host port is published twice: {published}"


def test_gateway_and_indexer_reach_encoder_and_qdrant_by_service_name(config: dict[str, Any]) -> None:
    services = _services(config)
    for name, prefix in [("gateway", "GATEWAY_"), ("indexer", "INDEXER_")]:
        env = environment(services[name]["environment"])
        assert env[f"{prefix}ENCODER"] == "dns:///encoder:50051"  # every replica, round-robin
        assert env[f"{prefix}QDRANT_URL"] == "http://qdrant:6333"


def test_builds_name_a_dockerfile_stage_and_declared_args(config: dict[str, Any]) -> None:
    for name, service in _services(config).items():
        build = service.get("build")
        if build is None:
            continue
        dockerfile = REPO / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        instructions = dockerfile_instructions(dockerfile)
        stages = {i.stage for i in instructions if i.keyword == "FROM"}
        assert build.get("target") in stages, f"{name}: target {build.get('target')} is not a stage"
        declared = {re.split(r"[= ]", i.args)[0] for i in instructions if i.keyword == "ARG"}
        assert set(build.get("args", {})) <= declared, f"{name}: undeclared build args"
        assert "image" in service, f"{name}: name the built image so services share one build"


def test_gpu_override_reserves_a_gpu_and_builds_cuda() -> None:
    services = _services(_config(COMPOSE_FILE, GPU_COMPOSE_FILE))
    cpu_images = {services[name]["image"] for name in ("indexer", "gateway")}
    for name in ("encoder", "trainer"):
        service = services[name]
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in device["capabilities"] and device["driver"] == "nvidia" for device in devices)
        assert service["build"]["args"]["TORCH_VARIANT"] == "cuda"
        assert service["image"] not in cpu_images, "the CUDA image must not overwrite the CPU tag"
    assert environment(services["encoder"]["environment"])["ENCODER_DEVICE"] == "cuda"


def test_qdrant_image_is_pinned_and_fits_the_client() -> None:
    image = load_yaml(COMPOSE_FILE)["services"]["qdrant"]["image"]
    match = re.fullmatch(r"qdrant/qdrant:v(\d+)\.(\d+)\.(\d+)(@sha256:[0-9a-f]{64})?", image)
    assert match, f"pin qdrant to an exact version: {image}"
    client_major, client_minor = (int(p) for p in importlib.metadata.version("qdrant-client").split(".")[:2])
    server_major, server_minor = int(match.group(1)), int(match.group(2))
    # qdrant-client's own compatibility rule: same major, minor within one.
    assert server_major == client_major
    assert abs(server_minor - client_minor) <= 1


def test_qdrant_healthcheck_needs_only_bash() -> None:
    test = command_words(load_yaml(COMPOSE_FILE)["services"]["qdrant"]["healthcheck"]["test"])
    assert test[:3] == ["CMD", "bash", "-c"]
    script = interpolate(test[3], {})
    assert "/dev/tcp/127.0.0.1/6333" in script
    assert "/readyz" in script
    assert not {"curl", "wget", "nc", "python"} & set(re.findall(r"[a-z]+", script))


def test_hf_offline_is_passed_to_model_services(config: dict[str, Any]) -> None:
    services = _services(config)
    for name in ("encoder", "trainer", "indexer"):
        assert environment(services[name]["environment"]).get("HF_HUB_OFFLINE") in {"0", "1"}, name


def test_gateway_and_indexer_run_the_torch_free_image(config: dict[str, Any]) -> None:
    services = _services(config)
    for name in ("gateway", "indexer"):
        assert services[name]["build"]["target"] == "runtime-torch-free", name
        assert "TORCH_VARIANT" not in services[name]["build"].get("args", {}), name
    for name in ("encoder", "trainer"):
        assert services[name]["build"]["target"] == "runtime", name
    assert services["gateway"]["image"] == services["indexer"]["image"]
    assert services["gateway"]["image"] not in {services[name]["image"] for name in ("encoder", "trainer")}


def test_one_image_name_is_one_build(config: dict[str, Any]) -> None:
    """Services that name the same image build it the same way: otherwise one build overwrites the other's tag."""
    builds: dict[str, dict[str, Any]] = {}
    for name, service in _services(config).items():
        if "build" in service:
            first = builds.setdefault(service["image"], service["build"])
            assert first == service["build"], f"{name}: {service['image']} is built two ways"
