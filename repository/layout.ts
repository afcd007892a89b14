// Where each thing lives in the repository folder (README.md, "Layout"). Every id passes its
// check (ids.ts) before it becomes part of a path.
import * as path from 'node:path';
import { checkDataSourceId, checkDiskId, checkPointId, checkSessionId } from './ids';
import { MANIFEST_FILE } from './manifest';

export class RepositoryLayout {
  constructor(readonly root: string) {}

  get configFile(): string {
    return path.join(this.root, 'config');
  }
  get lockFile(): string {
    return path.join(this.root, 'lock');
  }
  get dataSourcesDir(): string {
    return path.join(this.root, 'datasources');
  }
  get sessionsDir(): string {
    return path.join(this.root, 'sessions');
  }
  get restoreLeasesDir(): string {
    return path.join(this.root, 'leases');
  }
  get deletionLog(): string {
    return path.join(this.root, 'deletions.log');
  }
  dataSourceDir(ds: string): string {
    return path.join(this.dataSourcesDir, checkDataSourceId(ds));
  }
  settingsFile(ds: string): string {
    return path.join(this.dataSourceDir(ds), 'settings.json');
  }
  pointsDir(ds: string): string {
    return path.join(this.dataSourceDir(ds), 'points');
  }
  pointDir(ds: string, pointId: string): string {
    return path.join(this.pointsDir(ds), checkPointId(pointId));
  }
  manifestFile(ds: string, pointId: string): string {
    return path.join(this.pointDir(ds, pointId), MANIFEST_FILE);
  }
  indexFile(ds: string, pointId: string, diskId: string): string {
    return path.join(this.pointDir(ds, pointId), `${checkDiskId(diskId)}.fidx`);
  }
  sessionDir(sessionId: string): string {
    return path.join(this.sessionsDir, checkSessionId(sessionId));
  }
  sessionFile(sessionId: string): string {
    return path.join(this.sessionDir(sessionId), 'session.json');
  }
  stagedIndexFile(sessionId: string, diskId: string): string {
    return path.join(this.sessionDir(sessionId), `${checkDiskId(diskId)}.fidx`);
  }
  restoreLeaseFile(leaseId: string): string {
    return path.join(this.restoreLeasesDir, `${checkSessionId(leaseId)}.json`);
  }
}
