"""Plugins: components from the user's own code, registered next to tfgen's own.

A plugin is a Python module whose registry decorators (``@NETWORKS.register(...)``,
``@LIKELIHOODS.register(...)`` ...; :mod:`tfgen.registry`) run when it is imported.  tfgen
imports them after its built-in components (:func:`tfgen.assemble.load_plugins`):

* the entry points of installed packages in the group ``tfgen.components``
  (``[project.entry-points."tfgen.components"]``, ``name = "module"``), for every command;
* the modules and ``.py`` files named by ``--plugin`` (repeatable) and by the environment
  variable ``TFGEN_PLUGINS`` (separated by ``os.pathsep``), for code that is not installed.  A
  file is imported under a module name of its own, made from its path.

A config never imports code ("a config is data"): it names components, and a name that no
loaded plugin registers is an unknown name like any other.  What was loaded is recorded in the
run's run.json (:func:`records`: each plugin with its distribution and version, or its file
and the file's sha256, its components and the ones the run uses), so that a resume or an
evaluation without a plugin the run uses is refused in one line naming it
(:func:`refuse_missing`).

Every registry entry knows the plugin it came from (:class:`tfgen.registry.Entry`); a name
registered twice is one line naming both origins, and a plugin whose import fails leaves no
entry behind.  Each plugin is loaded once per process, however often it is named.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import os
import re
import sys
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from tfgen.errors import ConfigError, PluginError
from tfgen.registry import ALL, NameTaken, registering_for
from tfgen.schema import Component

#: the entry-point group of installed plugins
ENTRY_POINT_GROUP = "tfgen.components"
#: the environment variable naming plugins that are not installed (os.pathsep between them)
ENVIRONMENT = "TFGEN_PLUGINS"
#: what ``--plugin`` and ``TFGEN_PLUGINS`` take
ALLOWED = "a Python file (path ending in .py) or an importable module's dotted name"

_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


@dataclasses.dataclass(frozen=True)
class Plugin:
    """A loaded plugin, as run.json records it."""

    #: its module's dotted name (an entry point's or ``--plugin MODULE``), or a file's
    #: absolute path
    name: str
    source: str  # "entry point", "module" or "file"
    file: str | None = None
    sha256: str | None = None  # of ``file``
    dist: str | None = None  # an entry point's distribution and its version
    version: str | None = None
    entry_point: str | None = None

    @property
    def label(self) -> str:
        """How ``tfgen list`` shows an entry's origin: ``plugin tfgen-plugin-example 0.1.0``."""
        if self.dist:
            return f"plugin {self.dist} {self.version}"
        return f"plugin {Path(self.name).name if self.source == 'file' else self.name}"

    def origin(self) -> str:
        """Where it came from, for messages: the distribution, or the file and its hash."""
        if self.source == "entry point":
            return f"entry point {self.entry_point!r} of {self.dist} {self.version}"
        parts = [self.source] + ([self.file] if self.source == "module" and self.file else [])
        return ", ".join(parts + ([f"sha256 {self.sha256[:12]}"] if self.sha256 else []))

    def how_to_load(self) -> str:
        install = f" ({self.dist} {self.version})" if self.dist else ""
        return f"pass --plugin {self.name} or install it{install}"

    @classmethod
    def from_record(cls, record: dict) -> "Plugin":
        return cls(**{f.name: record.get(f.name) for f in dataclasses.fields(cls)})


#: the plugins loaded in this process, by name, in load order
_loaded: dict[str, Plugin] = {}
_entry_points_loaded = False


def loaded() -> list[Plugin]:
    return list(_loaded.values())


def load(specs: Sequence[str] = (), environment: str = "") -> list[Plugin]:
    """Load the installed plugins (once per process), then those ``environment`` (the value of
    ``TFGEN_PLUGINS``) and ``specs`` (``--plugin``'s) name; each plugin once.  Returns every
    plugin loaded."""
    global _entry_points_loaded
    if not _entry_points_loaded:
        # sorted: the same order (and so the same clash, if any) on every machine
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP),
                         key=lambda ep: (ep.module, ep.name)):
            _load_entry_point(ep)
        _entry_points_loaded = True
    for spec in (s.strip() for s in environment.split(os.pathsep)):
        if spec:
            _load_spec(spec, ENVIRONMENT)
    for spec in specs:
        _load_spec(spec, "--plugin")
    return loaded()


def _load_entry_point(ep: metadata.EntryPoint) -> None:
    if ep.module in _loaded:  # the same distribution found twice on sys.path
        return
    dist = getattr(ep, "dist", None)
    plugin = Plugin(ep.module, "entry point", dist=dist.metadata["Name"] if dist else None,
                    version=dist.version if dist else None, entry_point=ep.name)
    _import(plugin, ep.load, None)


def _load_spec(spec: str, given_by: str) -> None:
    """``spec`` (given by ``given_by``: ``--plugin`` or ``TFGEN_PLUGINS``): a file or a module."""
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConfigError(given_by, None, "not a file" if path.exists() else "no such file",
                              spec, ALLOWED)
        path = path.resolve()
        if str(path) in _loaded:
            return
        # its own module name (dataclasses and typing look a class's module up by name)
        tag = hashlib.sha256(str(path).encode()).hexdigest()[:12]
        module_name = f"tfgen_plugin_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{tag}"
        plugin = Plugin(str(path), "file", str(path), _sha256(path))
        _import(plugin, lambda: _exec_file(module_name, path), given_by, module_name)
        return
    if not _MODULE_NAME.fullmatch(spec):
        raise ConfigError(given_by, None, "neither a .py file nor a module name", spec, ALLOWED)
    if spec not in _loaded:
        _import(Plugin(spec, "module"), lambda: importlib.import_module(spec), given_by)


def _exec_file(module_name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def _import(plugin: Plugin, do_import: Callable[[], Any], given_by: str | None,
            module_name: str | None = None) -> None:
    """Import ``plugin`` by ``do_import``, its registrations carrying it; on failure, nothing
    of it stays (its entries, its module) and the failure is one line."""
    module_name = module_name or plugin.name
    try:
        with registering_for(plugin.name, plugin.label):
            do_import()
    except NameTaken as clash:
        unload(plugin.name, module_name)
        raise PluginError(_clash_line(plugin, clash)) from clash
    except (Exception, SystemExit) as err:
        unload(plugin.name, module_name)
        missing = getattr(err, "name", None) if isinstance(err, ModuleNotFoundError) else None
        if given_by and plugin.source == "module" and missing and (
                plugin.name == missing or plugin.name.startswith(missing + ".")):
            raise ConfigError(given_by, None, "no such module (not installed, not on "
                              "PYTHONPATH)", plugin.name, ALLOWED) from None
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise PluginError(f"plugin {plugin.name!r} ({plugin.origin()}): import failed: "
                          f"{type(err).__name__}: {first}{_where(err, plugin, module_name)}; "
                          f"run again with --debug for the traceback") from err
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None) or plugin.file
    _loaded[plugin.name] = dataclasses.replace(
        plugin, file=file, sha256=plugin.sha256 or (_sha256(Path(file)) if file else None))


def unload(name: str, module_name: str | None = None) -> None:
    """Forget plugin ``name``: its entries, its module and submodules (``module_name``: the
    name a file was imported under), its record.  A failed import calls it; so do tests."""
    for registry in ALL.values():
        registry.forget(name)
    plugin = _loaded.pop(name, None)
    if module_name is None and plugin is not None and plugin.source == "file":
        module_name = next((m for m, mod in sys.modules.items()
                            if getattr(mod, "__file__", None) == plugin.file), None)
    module_name = module_name or name
    for loaded_name in [m for m in sys.modules
                        if m == module_name or m.startswith(module_name + ".")]:
        del sys.modules[loaded_name]


def _clash_line(plugin: Plugin, clash: NameTaken) -> str:
    first = clash.first.plugin
    if first is None:
        by = "tfgen itself registers (built-in)"
    elif first == plugin.name:
        by = "it registers already"
    else:
        other = _loaded.get(first)
        by = f"plugin {first!r} ({other.origin() if other else clash.first.origin}) registers"
    return (f"plugin {plugin.name!r} ({plugin.origin()}): registers {clash.kind} "
            f"{clash.name!r}, which {by}; rename it in one of them")


def _where(err: BaseException, plugin: Plugin, module_name: str) -> str:
    """`` (FILE, line N)``: the innermost line of the plugin's own code in the traceback (or
    the line a SyntaxError points at)."""
    if isinstance(err, SyntaxError) and err.filename:
        return f" ({err.filename}, line {err.lineno})"
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if not f.filename.startswith("<")]
    top = module_name.split(".")[0]
    own = [f for f in frames if f.filename == plugin.file
           or re.search(rf"[/\\]{re.escape(top)}([/\\]|\.py$)", f.filename)]
    frame = (own or frames or [None])[-1]
    return f" ({frame.filename}, line {frame.lineno})" if frame else ""


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


# --------------------------------------------------------------------------- what a run records

def components_of(cfg: Any, key: str = "") -> Iterator[tuple[str, str, str]]:
    """(key path of the name, registry kind, name) of every component ``cfg`` (a
    :class:`tfgen.config.Config`, or a part of it) names, nested ones too (a scheme's
    encoder): ``("model.decoder.name", "networks", "mlp")``."""
    for f in dataclasses.fields(cfg):
        if f.metadata.get("internal"):
            continue
        value, path = getattr(cfg, f.name), f"{key}.{f.name}" if key else f.name
        kind = f.metadata.get("registry")
        items = ([(f"{path}[{i}]", c) for i, c in enumerate(value)] if isinstance(value, list)
                 else [(path, value)])
        for at, item in items:
            if kind and isinstance(item, Component):
                yield f"{at}.{f.metadata['name_key']}", kind, item.name
                if dataclasses.is_dataclass(item.params):
                    yield from components_of(item.params, at)
            elif dataclasses.is_dataclass(item) and not isinstance(item, type):
                yield from components_of(item, at)


def records(cfg: Any) -> list[dict]:
    """The loaded plugins as run.json records them: each one's origin, the components it
    registers and those of them ``cfg`` uses (``used``: key path, registry, name)."""
    used = list(components_of(cfg))
    out = []
    for plugin in loaded():
        record = {k: v for k, v in dataclasses.asdict(plugin).items() if v is not None}
        record["components"] = {kind: names for kind, registry in ALL.items()
                                if (names := [e.name for e in registry.entries()
                                              if e.plugin == plugin.name])}
        record["used"] = [{"key": at, "registry": kind, "name": name}
                          for at, kind, name in used
                          if name in ALL[kind] and ALL[kind].get(name).plugin == plugin.name]
        out.append(record)
    return out


def refuse_missing(recorded: list, where: str) -> list[str]:
    """Refuse a run (``where``: its directory) that uses components of a plugin its run.json
    ``recorded`` and that no plugin loaded now registers: one line per plugin, naming it, the
    components and where the config uses them (a config never loads a plugin itself).  Returns a warning for each used component that is loaded
    now from another plugin, version or file content."""
    errors, warnings = [], []
    for record in recorded if isinstance(recorded, list) else []:
        if not isinstance(record, dict) or not isinstance(record.get("name"), str):
            continue
        then = Plugin.from_record(record)
        missing: dict[tuple[str, str], list[str]] = {}  # (kind, name) -> key paths
        for use in record.get("used") or []:
            try:
                at, kind, name = use["key"], use["registry"], use["name"]
                registry = ALL[kind]
            except (KeyError, TypeError):  # a record tfgen did not write
                continue
            if name not in registry:
                missing.setdefault((registry.kind, name), []).append(at)
                continue
            now = _loaded.get(registry.get(name).plugin or "")
            if now is None or (now.name, now.version, now.sha256) != (
                    then.name, then.version, then.sha256):
                now_text = f"plugin {now.name!r} ({now.origin()})" if now else "tfgen (built-in)"
                warnings.append(f"{where}: {at}: {registry.kind} {name!r} comes from "
                                f"{now_text} now; the run used plugin {then.name!r} "
                                f"({then.origin()})")
        if missing:
            uses = ", ".join(f"{kind} {name!r} ({', '.join(keys)})"
                             for (kind, name), keys in missing.items())
            errors.append(ConfigError(where, None, f"uses {uses} from plugin {then.name!r} "
                                      f"({then.origin()}), which is not loaded; "
                                      f"{then.how_to_load()}"))
    if errors:
        raise ConfigError.combine(errors)
    return warnings
