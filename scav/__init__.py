"""SCAV: sequential contrastive audio-visual learning.

Every top-level folder X of the repository is the package ``scav.X`` (pyproject's
package-dir). Layers, bottom to top (docs/DESIGN.md; pyproject's [tool.importlinter] is the
contract and tests/test_layers.py checks it): ``core`` | ``sequence``, then ``model`` |
``data_manifests``, then ``extract``, then the apps ``train`` | ``retrieve`` | ``probe`` |
``dub``, then ``demo``. A module imports only from layers below its own.
"""

__version__ = "0.1.0"
