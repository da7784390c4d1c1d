// Sandbox records on disk: one JSON file per sandbox, replaced atomically (write a temp
// file, fsync, rename, fsync the directory) so a crash leaves the old or the new record,
// never a torn one.

import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from '../log';
import type { SandboxRecord } from './types';

const RECORD_SUFFIX = '.json';
const TEMP_SUFFIX = '.tmp';

export class RecordDir {
  constructor(readonly dir: string) {}

  async write(record: SandboxRecord): Promise<void> {
    const path = this.#path(record.id);
    const temp = path + TEMP_SUFFIX;
    const file = await fs.open(temp, 'w', 0o600);
    try {
      await file.writeFile(JSON.stringify(record, null, 2) + '\n');
      await file.sync();
    } finally {
      await file.close();
    }
    await fs.rename(temp, path);
    await this.#syncDir();
  }

  async delete(id: string): Promise<void> {
    await fs.rm(this.#path(id), { force: true });
    await this.#syncDir();
  }

  /** Every readable record; torn temp files and unreadable records are logged and skipped. */
  async readAll(log: Logger): Promise<SandboxRecord[]> {
    const records: SandboxRecord[] = [];
    for (const name of await fs.readdir(this.dir)) {
      const path = join(this.dir, name);
      if (name.endsWith(TEMP_SUFFIX)) {
        await fs.rm(path, { force: true });
        continue;
      }
      if (!name.endsWith(RECORD_SUFFIX)) continue;
      try {
        const record = JSON.parse(await fs.readFile(path, 'utf8')) as SandboxRecord;
        if (typeof record.id !== 'string' || `${record.id}${RECORD_SUFFIX}` !== name) {
          throw new Error('record id does not match its file name');
        }
        record.portMappings ??= []; // written before the store kept them
        records.push(record);
      } catch (err) {
        log.error('skipping unreadable sandbox record', { path, err });
      }
    }
    return records;
  }

  #path(id: string): string {
    return join(this.dir, id + RECORD_SUFFIX);
  }

  async #syncDir(): Promise<void> {
    const dir = await fs.open(this.dir, 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }
}
