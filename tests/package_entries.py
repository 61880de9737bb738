"""The entries of a registry that the package itself registers: tests
register others in the same process (pytest-xdist collects every test
module in each worker), and those are not ours to check."""


def package_names(registry) -> list[str]:
  """`registry.names()` registered by modules of `maml_plugin`, sorted."""
  return [n for n in registry.names()
          if registry.lookup(n).__module__.startswith('maml_plugin.')]
