"""vaelab's Hydra sweepers. Hydra instantiates sweepers only from the ``hydra_plugins``
namespace, and imports every module here at start-up, so they import nothing heavy."""
