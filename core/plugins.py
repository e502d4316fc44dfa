"""Plugin system (pluggy): hook specifications and the plugin manager.

A plugin is a module or object with hook implementations; a package exposes it through the
entry-point group ``fusepot``.  fusepot's built-ins in ``fusepot.plugins`` are registered
exactly like third-party ones, through entry points declared in pyproject.toml.

Each hook returns a list of `Component` records: a name, the interface class it builds, a
pydantic model for its parameters (the plugin's own schema), and a `build(params, context)`
factory.  Registrations are validated when loaded.
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable, Literal

import pluggy
import pydantic

from .interfaces import Ensemble, EvaluationTask, Observable, Potential

PROJECT = "fusepot"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Kind = Literal["potential", "ensemble", "observable", "evaluation"]
_INTERFACE = {"potential": Potential, "ensemble": Ensemble, "observable": Observable, "evaluation": EvaluationTask}
_HOOK = {"potential": "fusepot_potentials", "ensemble": "fusepot_ensembles", "observable": "fusepot_observables",
         "evaluation": "fusepot_evaluations"}


class PluginError(Exception):
    """A plugin failed validation at load time."""


@dataclass(frozen=True)
class Component:
    """One thing a plugin provides.

    name: unique within its kind (lower-case, e.g. "lennard_jones").
    cls: the class `build` returns; must subclass the kind's interface and be concrete.
    params: pydantic model of the spec's parameter block (extra keys forbidden).
    build: `build(params, context) -> instance`; `context` is a `BuildContext`.
    """

    name: str
    cls: type
    params: type[pydantic.BaseModel]
    build: Callable[[Any, "BuildContext"], Any]
    description: str = ""
    kind: str = ""  # filled in by the manager
    package: str = ""  # filled in by the manager


@dataclass
class BuildContext:
    """What a factory may need besides its own parameters."""

    species: list[str] = field(default_factory=list)  # chemical symbols in type-index order
    spec_dir: str = "."  # folder of the spec file, for relative paths
    dtype: Any = None
    extra: dict = field(default_factory=dict)


class HookSpecs:
    @hookspec
    def fusepot_potentials(self) -> list[Component]:
        """Potentials this plugin provides."""

    @hookspec
    def fusepot_ensembles(self) -> list[Component]:
        """Ensembles (samplers) this plugin provides."""

    @hookspec
    def fusepot_observables(self) -> list[Component]:
        """Observables this plugin provides."""

    @hookspec
    def fusepot_evaluations(self) -> list[Component]:
        """Evaluation-report tasks (`fusepot evaluate`) this plugin provides."""


def _package_of(plugin) -> str:
    mod = inspect.getmodule(plugin) if not inspect.ismodule(plugin) else plugin
    name = getattr(mod, "__name__", repr(plugin))
    return name


class PluginManager:
    """Loads plugins and keeps a validated registry of components by kind and name."""

    def __init__(self, load_entry_points: bool = True):
        self._pm = pluggy.PluginManager(PROJECT)
        self._pm.add_hookspecs(HookSpecs)
        self._registry: dict[str, dict[str, Component]] = {k: {} for k in _INTERFACE}
        self._dist_of: dict[int, str] = {}
        if load_entry_points:
            self.load_entry_points()

    # -- loading ---------------------------------------------------------------------------
    def load_entry_points(self) -> None:
        for ep in entry_points(group=PROJECT):
            dist = getattr(ep, "dist", None)
            dist_name = dist.name if dist is not None else "?"
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - report which plugin failed
                raise PluginError(f"plugin entry point {ep.name!r} ({ep.value}) from package {dist_name!r} "
                                  f"failed to import: {exc}") from exc
            self.register(plugin, name=f"{dist_name}:{ep.name}", package=dist_name)

    def register(self, plugin, name: str | None = None, package: str | None = None) -> None:
        package = package or _package_of(plugin)
        label = name or f"{package}:{type(plugin).__name__}:{id(plugin):x}"
        if self._pm.is_registered(plugin):
            return
        try:
            self._pm.register(plugin, name=label)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {label!r} from package {package!r} has an invalid hook: {exc}") from exc
        # unknown hooks (typos such as fusepot_potential) are errors, not silently ignored
        for attr in dir(plugin):
            if attr.startswith("fusepot_") and attr not in _HOOK.values():
                self._pm.unregister(plugin)
                raise PluginError(f"plugin {label!r} from package {package!r} defines unknown hook {attr!r}; "
                                  f"known hooks: {sorted(_HOOK.values())}")
        for kind, hook in _HOOK.items():
            impl = getattr(plugin, hook, None)
            if impl is None:
                continue
            try:
                comps = impl()
            except Exception as exc:  # noqa: BLE001
                self._pm.unregister(plugin)
                raise PluginError(f"plugin {label!r} from package {package!r}: hook {hook} raised {exc!r}") from exc
            for comp in comps or []:
                self._add(kind, comp, label, package, plugin)

    def _add(self, kind: str, comp: Component, label: str, package: str, plugin) -> None:
        where = f"plugin {label!r} from package {package!r}"

        def fail(msg):
            self._pm.unregister(plugin)
            raise PluginError(f"{where}: {kind} {getattr(comp, 'name', comp)!r}: {msg}")

        if not isinstance(comp, Component):
            fail(f"hook returned {type(comp).__name__}, expected fusepot.core.plugins.Component")
        if not comp.name or not comp.name.replace("_", "").replace("-", "").isalnum():
            fail("name must be a non-empty identifier")
        iface = _INTERFACE[kind]
        if not (inspect.isclass(comp.cls) and issubclass(comp.cls, iface)):
            fail(f"class {comp.cls!r} does not subclass fusepot.core.interfaces.{iface.__name__}")
        abstract = getattr(comp.cls, "__abstractmethods__", frozenset())
        if abstract:
            fail(f"class {comp.cls.__name__} leaves abstract method(s) {sorted(abstract)} unimplemented")
        if not (inspect.isclass(comp.params) and issubclass(comp.params, pydantic.BaseModel)):
            fail("params must be a pydantic BaseModel subclass")
        if comp.params.model_config.get("extra") != "forbid":
            fail("params model must set model_config = ConfigDict(extra='forbid') so unknown keys are errors")
        if not callable(comp.build):
            fail("build must be callable")
        try:
            inspect.signature(comp.build).bind(None, None)
        except TypeError:
            fail("build must accept (params, context)")
        if kind == "observable" and not comp.cls.reweightable and comp.cls.from_trajectory is Observable.from_trajectory:
            fail("an evaluation-only (not reweightable) observable must implement from_trajectory")
        if comp.name in self._registry[kind]:
            other = self._registry[kind][comp.name]
            fail(f"duplicate name: already provided by package {other.package!r}")
        self._registry[kind][comp.name] = dataclasses.replace(comp, kind=kind, package=package)

    # -- queries ---------------------------------------------------------------------------
    def get(self, kind: str, name: str) -> Component:
        if kind not in self._registry:
            raise KeyError(f"unknown component kind {kind!r}")
        try:
            return self._registry[kind][name]
        except KeyError:
            known = ", ".join(sorted(self._registry[kind])) or "none"
            raise KeyError(f"no {kind} plugin named {name!r}; available: {known}") from None

    def names(self, kind: str) -> list[str]:
        return sorted(self._registry[kind])

    def components(self) -> list[Component]:
        return [c for kind in self._registry for c in sorted(self._registry[kind].values(), key=lambda c: c.name)]

    def build(self, kind: str, name: str, params: dict | pydantic.BaseModel | None, context: BuildContext | None = None):
        comp = self.get(kind, name)
        if not isinstance(params, comp.params):
            params = comp.params.model_validate(params or {})
        return comp.build(params, context or BuildContext())


_DEFAULT: PluginManager | None = None


def get_plugin_manager(refresh: bool = False) -> PluginManager:
    """The process-wide plugin manager with all entry-point plugins loaded."""
    global _DEFAULT
    if _DEFAULT is None or refresh:
        _DEFAULT = PluginManager()
    return _DEFAULT
