// Compile the contracts with the pinned npm solc (no network) into build/*.json.
// Usage: node compile.js [--check]   (--check: exit 1 if build/ differs from a fresh compile)
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');
const solc = require('solc');

const EVM_VERSION = 'cancun'; // <= prague, and what the in-process test chain (py-evm) runs
const SOURCES = ['InferadRegistry.sol'];

const input = {
  language: 'Solidity',
  sources: Object.fromEntries(SOURCES.map((f) => [f, { content: fs.readFileSync(path.join(__dirname, f), 'utf8') }])),
  settings: {
    evmVersion: EVM_VERSION,
    optimizer: { enabled: true, runs: 200 },
    outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === 'error');
for (const e of output.errors || []) console.error(e.formattedMessage);
if (errors.length) process.exit(1);

let stale = false;
fs.mkdirSync(path.join(__dirname, 'build'), { recursive: true });
for (const file of SOURCES) {
  for (const [name, contract] of Object.entries(output.contracts[file])) {
    const artifact = {
      contractName: name,
      source: file,
      sourceSha256: crypto.createHash('sha256').update(input.sources[file].content).digest('hex'),
      compiler: `solc-js ${solc.version()}`,
      evmVersion: EVM_VERSION,
      optimizer: input.settings.optimizer,
      abi: contract.abi,
      bytecode: '0x' + contract.evm.bytecode.object,
      deployedBytecode: '0x' + contract.evm.deployedBytecode.object,
    };
    const target = path.join(__dirname, 'build', `${name}.json`);
    const text = JSON.stringify(artifact, null, 1) + '\n';
    if (process.argv.includes('--check')) {
      const current = fs.existsSync(target) ? fs.readFileSync(target, 'utf8') : '';
      if (current !== text) { console.error(`${target} is out of date: run make contracts`); stale = true; }
    } else {
      fs.writeFileSync(target, text);
      console.log(`wrote ${path.relative(process.cwd(), target)} (${contract.evm.bytecode.object.length / 2} bytes)`);
    }
  }
}
process.exit(stale ? 1 : 0);
