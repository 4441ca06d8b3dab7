"""weft-pack: app packages (manifest checks, signing, store, bundles) and signed `.wapp` app images."""
