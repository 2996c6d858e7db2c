"""The plugin manager, scopes (global / pool / listener) and the async hook dispatcher.

pluggy calls implementations synchronously; an ``async def`` implementation
would hand back an unawaited coroutine (and for a ``firstresult`` hook that
coroutine would "win"). :func:`acall` walks the implementations in pluggy's
order itself, awaits what needs awaiting, and applies ``firstresult`` to the
awaited value.
"""

from __future__ import annotations

import inspect
import logging
import types
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, cast

import pluggy

from . import _entry_points, hookspecs
from ._errors import PluginError

if TYPE_CHECKING:
    from ._transport import Transport

__all__ = ["ENTRY_POINT_GROUP", "HookScope", "global_scope", "hookimpl", "register_plugin"]

ENTRY_POINT_GROUP: Final = "trio_conduit"
hookimpl = pluggy.HookimplMarker("trio_conduit")
_log = logging.getLogger("trio_conduit.plugins")

# Hooks that are awaited by acall(); all others (registration) are called by pluggy.
_ASYNC_HOOKS: Final = frozenset(
    name
    for name, fn in vars(hookspecs).items()
    if name.startswith("conduit_") and inspect.iscoroutinefunction(fn)
)


#: What pluggy can take a hook implementation or specification from.
_HOOKABLE: Final = (types.FunctionType, types.MethodType, staticmethod, classmethod)


class _PluginManager(pluggy.PluginManager):
    """pluggy's manager, quicker at registering modules (every plugin of ours is one, at every start).

    pluggy looks at every name of a plugin with :func:`inspect.getattr_static`;
    in a module, only a function (or a bound method, a static or class method)
    can be a hook, so every other name is skipped at once. Anything else is
    pluggy's own lookup.
    """

    def parse_hookimpl_opts(self, plugin: object, name: str) -> pluggy.HookimplOpts | None:
        if isinstance(plugin, types.ModuleType) and not isinstance(vars(plugin).get(name), _HOOKABLE):
            return None
        return super().parse_hookimpl_opts(plugin, name)

    def parse_hookspec_opts(
        self, module_or_class: types.ModuleType | type, name: str
    ) -> pluggy.HookspecOpts | None:
        if isinstance(module_or_class, types.ModuleType) and not isinstance(
            vars(module_or_class).get(name), _HOOKABLE
        ):
            return None
        return super().parse_hookspec_opts(module_or_class, name)


def _new_manager() -> pluggy.PluginManager:
    pm = _PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    # Historic: every plugin registered later is called at once and may add its own specs.
    pm.hook.conduit_addhooks.call_historic(kwargs={"pluginmanager": pm})
    return pm


def _check_no_wrappers(pm: pluggy.PluginManager) -> None:
    for name in _ASYNC_HOOKS:
        for impl in getattr(pm.hook, name).get_hookimpls():
            if impl.hookwrapper or impl.wrapper:
                raise PluginError(
                    f"plugin {impl.plugin_name!r}: {name} is awaited by trio-conduit and "
                    "cannot be implemented as a wrapper"
                )


def _object_name(plugin: object) -> str:
    return f"{type(plugin).__module__}.{type(plugin).__qualname__}@{id(plugin):#x}"


class HookScope:
    """A set of plugins seen together: the global ones plus a pool's or listener's own.

    ``pool.scope`` is the pool's; a transport gets the scope of its connect or
    listen as ``ctx.scope``, and calls hooks through it (``await
    ctx.scope.acall("conduit_socket_created", ...)``). Scopes are made by the
    pool, not by hand.

    It owns a pluggy manager holding every plugin of the wider scope and its
    own extras, so pluggy's ordering holds across scopes. The transport
    registry is built once per scope. ``pm`` is complete when the scope is
    made (a scope does not change; registering a global plugin makes a new
    global scope): ``implemented`` is fixed then.
    """

    def __init__(self, pm: pluggy.PluginManager, parent: HookScope | None = None) -> None:
        #: The pluggy manager holding every plugin of this scope (the global ones, then
        #: the pool's, then the listener's); complete when the scope is made.
        self.pm = pm
        #: The wider scope this one extends (``None`` for the global scope).
        self.parent = parent
        self._transports: dict[str, Transport] | None = None
        #: The hooks at least one plugin here implements (``name in scope.implemented``
        #: is the cheap test hot paths use before making a call's arguments).
        self.implemented: frozenset[str] = frozenset(
            name
            for name, caller in vars(pm.hook).items()
            if isinstance(caller, pluggy.HookCaller) and caller.get_hookimpls()
        )

    # -- building -------------------------------------------------------------
    def child(self, plugins: Iterable[object]) -> HookScope:
        """A narrower scope: everything here plus ``plugins``. Returns self if none."""
        extras = list(plugins)
        if not extras:
            return self
        pm = _new_manager()
        for name, plugin in self.pm.list_name_plugin():
            pm.register(plugin, name=name)
        for plugin in extras:
            try:
                # pluggy would name an object without __name__ by its id(): useless in messages.
                pm.register(plugin, name=getattr(plugin, "__name__", None) or _object_name(plugin))
            except (ValueError, pluggy.PluginValidationError) as exc:
                raise PluginError(f"cannot register plugin {plugin!r}: {exc}") from exc
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(str(exc)) from exc
        _check_no_wrappers(pm)
        return HookScope(pm, self)

    # -- queries --------------------------------------------------------------
    def has_impls(self, hook: str) -> bool:
        """Whether some plugin in this scope implements ``hook``."""
        return hook in self.implemented

    @property
    def transports(self) -> Mapping[str, Transport]:
        """scheme → transport, from every plugin's ``conduit_transports``."""
        if self._transports is None:
            self._transports = self._collect_transports()
        return self._transports

    def _collect_transports(self) -> dict[str, Transport]:
        table: dict[str, Transport] = {}
        for impl in reversed(self.pm.hook.conduit_transports.get_hookimpls()):
            result = cast("Iterable[Transport] | None", impl.function())
            for transport in result or ():
                transport.plugin_name = impl.plugin_name
                transport.scope = self
                for scheme in transport.schemes:
                    other = table.get(scheme)
                    if other is not None and other is not transport:
                        raise PluginError(
                            f"scheme {scheme!r} registered twice: by plugin "
                            f"{other.plugin_name!r} and by {impl.plugin_name!r}"
                        )
                    table[scheme] = transport
        return table

    def transport_for(self, scheme: str) -> Transport | None:
        """The transport registered for ``scheme`` in this scope, or ``None``."""
        return self.transports.get(scheme)

    # -- calling --------------------------------------------------------------
    async def acall(self, hook: str, /, **kwargs: Any) -> list[Any]:
        """Await every implementation of ``hook`` in pluggy's order; collect non-None results."""
        return await _dispatch(self.pm, hook, kwargs, firstresult=False)  # type: ignore[no-any-return]

    async def acall_first(self, hook: str, /, **kwargs: Any) -> Any:
        """Await implementations in order until one returns a value that is not ``None``."""
        return await _dispatch(self.pm, hook, kwargs, firstresult=True)

    async def notify(self, hook: str, /, **kwargs: Any) -> None:
        """Like :meth:`acall` for notification hooks: errors are logged, never raised."""
        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
            try:
                result = impl.function(*[kwargs[a] for a in impl.argnames])
                if inspect.isawaitable(result):
                    await result
            except Exception:
                _log.exception("plugin %r: %s raised; ignored", impl.plugin_name, hook)


async def _dispatch(
    pm: pluggy.PluginManager, hook: str, kwargs: Mapping[str, Any], *, firstresult: bool
) -> Any:
    results: list[Any] = []
    # pluggy keeps implementations ordered so that the *last* is called first.
    for impl in reversed(getattr(pm.hook, hook).get_hookimpls()):
        result = impl.function(*[kwargs[a] for a in impl.argnames])
        if inspect.isawaitable(result):
            result = await result
        if result is not None:
            if firstresult:
                return result
            results.append(result)
    return None if firstresult else results


_GLOBAL: HookScope | None = None
_LOAD_ERRORS: dict[str, str] = {}
_DEFAULT_PLUGINS: list[tuple[object, str | None]] = []
#: The entry-point plugins registered in the global scope: name → where it came from.
_LOADED: dict[str, str] = {}


def _group_entry_points() -> list[tuple[str, str, Callable[[], object]]]:
    """(name, value, load) for each entry point of the group, in importlib.metadata's order.

    :mod:`trio_conduit._entry_points` reads them cheaply where it can (start-up
    time); otherwise :mod:`importlib.metadata` does.
    """
    found = _entry_points.scan(ENTRY_POINT_GROUP)
    if found is not None:
        return [(ep.name, ep.value, ep.load) for ep in found]
    from importlib import metadata

    return [(ep.name, ep.value, ep.load) for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)]


def _build_global() -> HookScope:
    pm = _new_manager()
    for plugin, name in _DEFAULT_PLUGINS:
        try:
            pm.register(plugin, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            raise PluginError(f"cannot register plugin {plugin!r}: {exc}") from exc
    _LOAD_ERRORS.clear()
    _LOADED.clear()
    # One entry point at a time: a plugin that fails to import is reported (logged, and
    # listed by load_errors() / `conduit check`), and does not take the others down.
    for name, value, load in _group_entry_points():
        if pm.has_plugin(name) or pm.is_blocked(name):
            continue
        try:
            plugin = load()
            pm.register(plugin, name=name)
        except Exception as exc:
            _LOAD_ERRORS[name] = f"{value}: {type(exc).__name__}: {exc}"
            _log.error("cannot load plugin %r (%s): %r; skipped", name, value, exc)
            continue
        _LOADED[name] = value
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(str(exc)) from exc
    _check_no_wrappers(pm)
    return HookScope(pm)


def global_scope() -> HookScope:
    """The process-wide scope: entry-point plugins and those given to register_plugin()."""
    global _GLOBAL
    if _GLOBAL is None:
        _GLOBAL = _build_global()
    return _GLOBAL


def register_plugin(plugin: object, name: str | None = None) -> None:
    """Register a plugin globally (for pools opened after this call)."""
    global _GLOBAL
    _DEFAULT_PLUGINS.append((plugin, name))
    _GLOBAL = None
    try:
        global_scope()
    except BaseException:
        _DEFAULT_PLUGINS.pop()  # an invalid plugin must not break every later pool
        _GLOBAL = None
        raise


def unregister_plugin(plugin: object) -> None:
    """Undo :func:`register_plugin`."""
    global _GLOBAL
    _DEFAULT_PLUGINS[:] = [(p, n) for p, n in _DEFAULT_PLUGINS if p is not plugin]
    _GLOBAL = None


def load_errors() -> dict[str, str]:
    """Entry-point plugins that failed to load: name → what went wrong."""
    global_scope()
    return dict(_LOAD_ERRORS)


def plugin_distributions() -> list[tuple[str, str, str]]:
    """(plugin name, distribution, version) for plugins loaded from entry points.

    Only ``conduit check`` and ``conduit plugins`` ask, so :mod:`importlib.metadata`
    (which parses each distribution's ``METADATA``) is imported here, not at start-up.
    """
    from importlib import metadata

    global_scope()
    pending = dict(_LOADED)
    found: list[tuple[str, str, str]] = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pending.get(ep.name) == ep.value and ep.dist is not None:
            del pending[ep.name]  # the first of a name is the one registered
            found.append((ep.name, ep.dist.metadata["Name"] or "?", ep.dist.version))
    return found
