"""Probes taken from outside a model: forward hooks on its modules and wrappers around its
methods, so a subject's code is never edited to be judged (docs/SUBJECTS.md).

    probes = HookProbes(model, to_numpy,
                        modules={"backbone.layer1": "backbone.layer1",
                                 "bbox_head.cls_convs.1": "head.cls_tower.{call}"},
                        methods={(model.bbox_head, "get_targets"): unpack_targets})
    with probes.capture() as found:
        model.loss(batch)
    found["head.cls_tower.0"]  # numpy array

A module's name may hold "{call}": the how-many-th call of that module in this capture (a
head shared by the pyramid levels runs once per level). A method's entry is such a name
(its return value is recorded) or a function of its return value giving {name: tensor}.
Works for PyTorch (`register_forward_hook`) and Jittor 1.3.11 (`register_forward_hook`:
one hook per module, so a hook the model had is put back afterwards).

    with calls(model.bbox_head.loss_cls, "forward", log, "qfl"):   # arguments too
        model.loss(batch)
    tag, args, kwargs, result = log[0]
"""
import contextlib
import sys


class HookProbes:

    def __init__(self, model, to_numpy, modules=None, methods=None):
        self.model = model
        self.to_numpy = to_numpy
        self.modules = dict(modules or {})
        self.methods = dict(methods or {})
        named = dict(model.named_modules())
        absent = [path for path in self.modules if path not in named]
        if absent:
            raise KeyError(f"no module {', '.join(absent)} in {type(model).__name__}")
        self._targets = {path: named[path] for path in self.modules}
        self._found = None

    def _store(self, name, value):
        if not isinstance(value, (list, tuple)):
            self._found.pop(name, None)  # re-inserted: the dict keeps the latest forward's order
            self._found[name] = self.to_numpy(value)
            return
        raise TypeError(f"probe {name}: a module output that is a {type(value).__name__}; "
                        f"map it with a method entry that picks the tensor")

    def _record(self, template, value, counts):
        if callable(template):
            for name, tensor in template(value).items():
                self._store(name, tensor)
            return
        call = counts.get(template, 0)
        counts[template] = call + 1
        self._store(template.format(call=call), value)

    @contextlib.contextmanager
    def capture(self):
        """Every mapped output of the block, as numpy copies by canonical name."""
        if self._found is not None:
            raise RuntimeError("HookProbes.capture() is already active")
        self._found, counts = {}, {}
        with contextlib.ExitStack() as undo:
            for path, template in self.modules.items():
                undo.enter_context(_forward_hook(
                    self._targets[path],
                    lambda module, args, out, t=template: self._record(t, out, counts)))
            for (owner, method), template in self.methods.items():
                undo.enter_context(_wrapped(owner, method,
                                            lambda out, t=template: self._record(t, out, counts)))
            try:
                yield self._found
            finally:
                self._found = None


@contextlib.contextmanager
def _forward_hook(module, hook):
    def call(module_, args, out, *kwargs):  # Jittor passes the keyword arguments too
        hook(module_, args, out)
    torch = sys.modules.get("torch")  # a PyTorch module exists only where torch is imported
    if torch is not None and isinstance(module, torch.nn.Module):  # hooks removed by handle
        handle = module.register_forward_hook(call)
        try:
            yield
        finally:
            handle.remove()
        return
    # Jittor: one hook per module, kept where its register_forward_hook puts it (no getter)
    previous = module.__dict__.get("__fhook__")

    def chained(module_, args, out, *kwargs):
        call(module_, args, out)
        if previous is not None:
            return previous(module_, args, out, *kwargs)
    module.register_forward_hook(chained)
    try:
        yield
    finally:
        module.remove_forward_hook()
        if previous is not None:
            module.register_forward_hook(previous)


@contextlib.contextmanager
def _shadowed(owner, method, make_wrapper):
    """`owner.method` replaced by make_wrapper(original) for the block: an instance
    attribute shadowing the class's method, deleted afterwards (a module's own function or
    an instance's own attribute is put back)."""
    original = getattr(owner, method)
    had_own = method in vars(owner)
    setattr(owner, method, make_wrapper(original))
    try:
        yield
    finally:
        if had_own:
            setattr(owner, method, original)
        else:
            delattr(owner, method)


def calls(owner, method, log, tag=None):
    """A block in which `owner.method` appends [tag, args, kwargs, result] to `log`, in the
    order the calls start (a call made inside another comes after it): what a method entry
    of HookProbes cannot see, the arguments."""
    def make(original):
        def wrapper(*args, **kwargs):
            entry = [tag, args, kwargs, None]
            log.append(entry)
            entry[3] = original(*args, **kwargs)
            return entry[3]
        return wrapper
    return _shadowed(owner, method, make)


def _wrapped(owner, method, record):
    """A block in which `owner.method` records its return value."""
    def make(original):
        def wrapper(*args, **kwargs):
            out = original(*args, **kwargs)
            record(out)
            return out
        return wrapper
    return _shadowed(owner, method, make)
