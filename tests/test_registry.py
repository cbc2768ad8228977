from dataclasses import dataclass

import pytest

import xlm
from xlm.registry import ArchRegistry, DuplicateNameError, Family, FamilyRegistry, UnknownNameError


@dataclass(kw_only=True)
class _Cfg:
    width: int = 8


def _registry() -> ArchRegistry[_Cfg]:
    reg = ArchRegistry[_Cfg]("toy")

    @reg.decorator("toy_small")
    def _small() -> _Cfg:
        return _Cfg(width=4)

    @reg.decorator("toy_large")
    def _large() -> _Cfg:
        return _Cfg(width=64)

    return reg


def test_get_returns_a_fresh_config_each_call():
    reg = _registry()
    a = reg.get("toy_small")
    a.width = 999
    assert reg.get("toy_small").width == 4
    assert reg.names() == ["toy_large", "toy_small"]


def test_duplicate_arch_is_an_error():
    reg = _registry()
    with pytest.raises(DuplicateNameError, match="toy_small"):
        reg.register("toy_small", _Cfg)


def test_unknown_arch_lists_close_names():
    reg = _registry()
    with pytest.raises(UnknownNameError) as info:
        reg.get("toy_smal")
    message = str(info.value)
    assert "did you mean 'toy_small'" in message
    assert "toy_large" in message  # the full listing


def _family(name: str, archs: ArchRegistry) -> Family:
    return Family(name=name, config_class=_Cfg, archs=archs, factory=lambda c, **k: None,  # type: ignore[arg-type]
                  unit_factory=lambda *a: None, sampler_config_class=_Cfg, source=f"test:{name}")


def test_family_registry_rejects_duplicates_and_shared_arch_names():
    fams = FamilyRegistry()
    fams.register(_family("toy", _registry()))
    with pytest.raises(DuplicateNameError, match="toy"):
        fams.register(_family("toy", ArchRegistry("toy")))
    with pytest.raises(DuplicateNameError, match="toy_large.*already defined by .toy."):
        fams.register(_family("other", _registry()))
    assert fams.get_by_arch("toy_large").name == "toy"
    with pytest.raises(UnknownNameError, match="did you mean 'toy'"):
        fams.get("toyy")


def test_core_archs_are_listed_with_their_family():
    archs = xlm.list_archs()
    for name in ("arlm_tiny", "arlm_star", "arlm_small", "arlm_base"):
        assert archs[name] == "arlm"
    assert "arlm" in xlm.list_families()


def test_create_model_applies_overrides_and_rejects_unknown_fields():
    model = xlm.create_model("arlm_tiny", vocab_size=50)
    assert model.config.vocab_size == 50
    with pytest.raises(TypeError, match="no field 'vocab'; did you mean 'vocab_size'"):
        xlm.create_model("arlm_tiny", vocab=50)


def test_family_registry_loads_core_before_any_use_and_discovers_on_a_miss_or_a_listing():
    """A miss needs a plugin (discovery may raise); a listing does not (discovery only warns)."""
    calls: list[str] = []
    fams = FamilyRegistry(load_core=lambda: (calls.append("core"), fams.register(_family("toy", _registry()))),
                          discover=lambda needed: calls.append("needed" if needed else "listing"))
    assert fams.get("toy").name == "toy" and fams.get_by_arch("toy_small").name == "toy"
    assert calls == ["core"]  # hits: no discovery
    with pytest.raises(DuplicateNameError, match="toy_large.*already defined by .toy."):
        fams.register(_family("other", _registry()))
    with pytest.raises(UnknownNameError):
        fams.get("missing")
    assert calls == ["core", "needed", "listing"]  # the miss, then the listing its message makes
    del calls[1:]
    assert fams.family_of_arch("missing_arch") is None and calls == ["core", "needed"]
    del calls[1:]
    assert fams.names() == ["toy"] and calls == ["core", "listing"]
    del calls[1:]
    assert fams.list_archs() == {"toy_large": "toy", "toy_small": "toy"} and calls == ["core", "listing"]


def test_a_failed_core_load_is_retried():
    attempts: list[int] = []

    def load() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise ImportError("no torch here")

    fams = FamilyRegistry(load_core=load)
    with pytest.raises(ImportError):
        fams.names()
    assert fams.names() == [] and len(attempts) == 2
    fams.names()
    assert len(attempts) == 2


def test_task_registry_loads_core_tasks_before_any_use_and_discovers_on_a_miss_or_a_listing():
    from xlm.data.task import TaskConfig
    from xlm.registry import RegisteredTask, TaskRegistry

    calls: list[str] = []

    def core() -> None:
        calls.append("core")
        reg.register(RegisteredTask(name="toy_task", config_class=TaskConfig, builder=lambda config: config))

    reg = TaskRegistry(load_core=core, discover=lambda needed: calls.append("needed" if needed else "listing"))
    assert reg.get("toy_task").name == "toy_task" and "toy_task" in reg
    assert calls == ["core"]  # hits: no discovery
    with pytest.raises(UnknownNameError, match="toy_tsak.*did you mean 'toy_task'"):
        reg.get("toy_tsak")
    assert calls == ["core", "needed", "listing"]  # the miss, then the listing its message makes
    del calls[1:]
    assert "toy_tsak" not in reg and calls == ["core", "needed"]
    del calls[1:]
    assert reg.names() == ["toy_task"] and calls == ["core", "listing"]


def test_the_core_tasks_register_on_the_first_lookup_not_at_import():
    import subprocess
    import sys

    check = ("import sys, xlm.registry as r\n"
             "assert 'xlm.data.tasks' not in sys.modules\n"
             "assert {'star_easy', 'sort', 'text'} <= set(r.list_tasks()), r.list_tasks()\n"
             "assert 'xlm.data.tasks' in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
