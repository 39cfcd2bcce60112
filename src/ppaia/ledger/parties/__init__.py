"""The ledger systems as real parties: every role a process with its own keys, account and data.

- :mod:`~ppaia.ledger.parties.storage`: blobs by content address over the network runtime (serve, DHT
  providers, verified fetch, re-serve, refuse and strike);
- :mod:`~ppaia.ledger.parties.chain`: a party's own Ethereum account, the registry's events folded into
  tables;
- :mod:`~ppaia.ledger.parties.rules`: FLoBC's scores and aggregate, and FedAvg's, computed from the chain;
- :mod:`~ppaia.ledger.parties.party`, :mod:`~ppaia.ledger.parties.trainer`,
  :mod:`~ppaia.ledger.parties.validator`, :mod:`~ppaia.ledger.parties.publisher`: the roles;
- :mod:`~ppaia.ledger.parties.process`: a role run as a process;
- :mod:`~ppaia.ledger.parties.audit`: anyone's check of a run from the chain and the blobs;
- :mod:`~ppaia.ledger.parties.launch`: a whole system on one machine in one command.
"""
