// A local Ethereum dev node for ppaia's JSON-RPC ledger test: `npx hardhat node --hostname 127.0.0.1`.
module.exports = { networks: { hardhat: { chainId: 31337 } } };
