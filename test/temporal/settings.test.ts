import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadTemporalSettings, TemporalSettingsInvalid } from '../../temporal/connection';
import { temporalSqlitePragmas } from '../../temporal/dev-server';

describe('Temporal connection settings', () => {
  test('default is the local dev server', () => {
    const s = loadTemporalSettings({ HOME: os.tmpdir(), TEMPORAL_CONFIG_FILE: '/nonexistent/temporal.toml' });
    expect(s.address).toBe('localhost:7233');
    expect(s.namespace).toBe('default');
    expect(s.source).toBe('default');
  });

  test('standard environment variables win', () => {
    const s = loadTemporalSettings({
      TEMPORAL_CONFIG_FILE: '/nonexistent/temporal.toml',
      TEMPORAL_ADDRESS: 'temporal.example.com:7233',
      TEMPORAL_NAMESPACE: 'backups',
      TEMPORAL_API_KEY: 'secret-key',
    });
    expect(s.address).toBe('temporal.example.com:7233');
    expect(s.namespace).toBe('backups');
    expect(s.source).toBe('TEMPORAL_ADDRESS');
    expect(s.connectionOptions.apiKey).toBe('secret-key');
    // An API key implies TLS, as the Temporal CLI and SDKs do.
    expect(s.connectionOptions.tls).toBeTruthy();
  });

  test('a TOML config profile is honoured', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hvp-cfg-'));
    const file = path.join(dir, 'temporal.toml');
    fs.writeFileSync(
      file,
      '[profile.default]\naddress = "localhost:7233"\n\n[profile.prod]\naddress = "prod.tmprl.example:7233"\nnamespace = "dpm.prod"\n',
    );
    const s = loadTemporalSettings({ TEMPORAL_CONFIG_FILE: file, TEMPORAL_PROFILE: 'prod' });
    expect(s.address).toBe('prod.tmprl.example:7233');
    expect(s.namespace).toBe('dpm.prod');
    expect(s.source).toBe('config profile');
  });

  test.each(['localhost', 'http://localhost:7233', 'host:99999', 'a b:7233'])('"%s" is refused with the accepted form', (addr) => {
    expect(() => loadTemporalSettings({ TEMPORAL_CONFIG_FILE: '/nonexistent', TEMPORAL_ADDRESS: addr })).toThrow(
      TemporalSettingsInvalid,
    );
    expect(() => loadTemporalSettings({ TEMPORAL_CONFIG_FILE: '/nonexistent', TEMPORAL_ADDRESS: addr })).toThrow(/host:port/);
  });
});

test('the embedded Temporal server keeps its SQLite in WAL mode, synced at checkpoints unless HVPROTECT_TEMPORAL_SYNC=full; anything else is refused, naming both', () => {
  expect(temporalSqlitePragmas(undefined)).toEqual(['journal_mode=wal', 'synchronous=normal']);
  expect(temporalSqlitePragmas('FULL')).toEqual(['journal_mode=wal', 'synchronous=full']);
  expect(() => temporalSqlitePragmas('off')).toThrow('HVPROTECT_TEMPORAL_SYNC=off: give "normal" (the default: synced at checkpoints) or "full" (synced at every commit)');
});
