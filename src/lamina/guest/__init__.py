"""The configuration service (STORM's secure interface at ``storm.local``): what an
instance may ask Lamina about itself, at ``http://lamina.local/guest/...`` on every
network, relayed there by its host's agent. An instance proves who it is with the token on
its config disk and may read or change only its own record. See docs/networks.md."""
