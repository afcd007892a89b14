// ConvertTo-Json output as Windows PowerShell 5.1 writes it, from the PowerShell 7 shapes the
// fixtures hold: dates as "\/Date(ms)\/", enums as their numbers (VM state, SnapshotType), and
// arrays as {"value":[...],"Count":n} (the System.Array type data 5.1 loads; the scripts remove
// it, but a host with it in a profile or module still answers so).
'use strict';

const VM_STATE = { Running: 2, Off: 3, Saved: 6, Paused: 9 };
const SNAPSHOT_TYPE = { Standard: 0, Recovery: 1, Planned: 2 };
const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;

function asWindowsPowerShell51(v, key) {
  if (Array.isArray(v)) {
    const items = v.map((x) => asWindowsPowerShell51(x));
    // Only lists of objects carry the wrapper here; numbers stay plain lists (as GetVirtualDiskChanges' out-parameters).
    return items.some((x) => x && typeof x === 'object') ? { value: items, Count: items.length } : items;
  }
  if (v && typeof v === 'object') {
    const out = {};
    for (const [k, x] of Object.entries(v)) out[k] = asWindowsPowerShell51(x, k);
    return out;
  }
  if (typeof v === 'string') {
    if (key === 'State' && VM_STATE[v] !== undefined) return VM_STATE[v];
    if (key === 'SnapshotType' && SNAPSHOT_TYPE[v] !== undefined) return SNAPSHOT_TYPE[v];
    if (ISO.test(v) && key !== 'at') return '/Date(' + Date.parse(v) + ')/';
  }
  return v;
}

module.exports = { asWindowsPowerShell51 };
