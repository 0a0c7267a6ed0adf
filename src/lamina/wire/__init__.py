"""What the manager and the agents share: the protocol's schemas (``protocol``), the
manager's client of one agent (``client``) and its pool (``pool``), and the mutual-TLS
pieces both sides use (``tls``). Neither side's own code lives here."""
