// `hvprotect group create|list|show|set|add|remove|delete`: protection groups from the CLI.
import { Option, type Command } from 'commander';
import type { Client } from '@temporalio/client';
import { UsageError } from './errors';
import { out, table } from './format';
import { parseTimes } from './protection';
import { addMembers, createGroup, deleteGroup, groupState, listGroups, removeMembers, setGroupPolicy } from './groups';
import type { GroupMember, GroupPolicy, GroupState } from '../workflows/protection-group';

interface Helpers {
  withClient: <T>(fn: (client: Client) => Promise<T>) => Promise<T>;
  positiveInt: (v: string) => number;
  sizeArg: (v: string) => string;
}

const collect = (v: string, prev: string[]) => [...prev, v];

function memberOptions(cmd: Command): Command {
  return cmd
    .option('--vm <name>', 'a VM, by name or id (repeatable)', collect, [])
    .option('--host <name>', 'every VM on this host, now and later (repeatable)', collect, [])
    .option('--cluster <name>', 'every VM of this cluster, now and later (repeatable)', collect, []);
}

function membersOf(o: { vm: string[]; host: string[]; cluster: string[] }): GroupMember[] {
  return [...o.vm.map((name) => ({ kind: 'vm' as const, name })), ...o.host.map((name) => ({ kind: 'host' as const, name })), ...o.cluster.map((name) => ({ kind: 'cluster' as const, name }))];
}

function policyOptions(cmd: Command, h: Helpers, defaults: boolean): Command {
  return cmd
    .option('--at <times>', `express full times of day, HH:MM[,HH:MM…]${defaults ? ' (default 02:00)' : ''}`)
    .option('--every <hours>', 'or every N hours instead of fixed times', h.positiveInt)
    .option('--tz <zone>', 'the time zone of --at (IANA, default the server\'s)')
    .option('--rpo <hours>', 'recovery point objective (default the longest gap between runs + 1 h)', h.positiveInt)
    .option('--retention-days <days>', 'retention range in days', h.positiveInt)
    .option('--max-points <n>', 'most recovery points to keep per VM', h.positiveInt)
    .option('--maxsize <size>', 'shadow storage limit per VM: 20GB, 15% or UNBOUNDED', h.sizeArg)
    .option('--no-offline', 'fail rather than save or pause a VM that cannot be backed up online')
    .addOption(new Option('--offline-method <m>', 'how to make a running VM quiet for an offline backup').choices(['save', 'pause']));
}

function policyOf(o: Record<string, unknown>, defaults: boolean): Partial<Omit<GroupPolicy, 'server'>> {
  if (o.at && o.every) throw new UsageError('give either --at or --every, not both');
  const p: Partial<Omit<GroupPolicy, 'server'>> = {};
  if (o.at) Object.assign(p, { at: parseTimes(String(o.at)), everyHours: undefined });
  if (o.every) Object.assign(p, { everyHours: Number(o.every), at: undefined });
  if (o.tz) p.timezone = String(o.tz);
  if (o.rpo) p.rpoHours = Number(o.rpo);
  if (o.retentionDays) p.retentionDays = Number(o.retentionDays);
  if (o.maxPoints) p.maxPoints = Number(o.maxPoints);
  if (o.maxsize) p.maxSize = String(o.maxsize);
  if (defaults || o.offline === false) p.allowOffline = o.offline !== false;
  if (defaults || o.offlineMethod) p.offlineMethod = (o.offlineMethod as 'save' | 'pause' | undefined) ?? 'save';
  if (defaults && !p.at && !p.everyHours) p.at = ['02:00'];
  return p;
}

/** "vm a, host hv01, cluster c1". */
function memberNames(g: GroupState): string {
  return g.members.map((m) => `${m.kind} ${m.name}`).join(', ');
}

function describeGroup(g: GroupState): string {
  const p = g.policy;
  const lines = [
    `group ${g.name} on ${p.server}: ${p.everyHours ? `every ${p.everyHours} h` : `daily at ${(p.at ?? []).join(', ')}`}${p.timezone ? ` ${p.timezone}` : ''}` +
      `${p.rpoHours ? `, RPO ${p.rpoHours} h` : ''}${p.retentionDays ? `, ${p.retentionDays} days` : ''}${p.maxPoints ? `, at most ${p.maxPoints} points` : ''}` +
      `${p.maxSize ? `, shadow storage ${p.maxSize}` : ''}, ${p.allowOffline ? `offline by ${p.offlineMethod} when needed` : 'online only'}`,
    `members: ${memberNames(g) || '(none)'}`,
    `last reconcile: ${g.lastReconcile ? `${g.lastReconcile.at}${g.lastReconcile.error ? ` FAILED: ${g.lastReconcile.error}` : ''}` : 'not yet'}${g.silentHosts.length ? `; no answer from ${g.silentHosts.join(', ')}` : ''}`,
    '',
    table(
      [
        ...g.protected.map((v) => ({ vm: v.vm, host: v.host, 'data source': v.dataSource, state: 'protected', since: v.since })),
        ...g.missing.map((v) => ({ vm: v.vm, host: v.host, 'data source': v.dataSource, state: 'MISSING: no host reports it (still protected, points kept)', since: v.missingSince })),
        ...g.refused.map((r) => ({ vm: r.vm, state: `refused: ${r.reason}` })),
      ],
      ['vm', 'host', 'data source', 'state', 'since'],
    ),
  ];
  return `${lines.join('\n')}`;
}

export function registerGroupCommands(program: Command, h: Helpers): void {
  const group = program
    .command('group')
    .description('Protection groups: one policy (schedule, RPO, retention, shadow storage, offline policy, server) for many VMs — by name, or whole hosts and clusters, whose new VMs are protected by themselves')
    .addHelpText(
      'after',
      '\nExamples:\n  hvprotect group create gold --cluster prod --at 01:00,13:00 --tz Europe/Berlin --retention-days 14\n' +
        '  hvprotect group add gold --vm sql01 --host hv07\n  hvprotect group show gold\n  hvprotect group set gold --every 6\n  hvprotect group remove gold --vm sql01 --unprotect\n',
    );
  policyOptions(memberOptions(group.command('create').argument('<name>').description('make a group (and protect its members\' VMs)')), h, true)
    .option('--server <id>', 'the protection server that owns its VMs (default: the only one, else the one owning fewest)')
    .addOption(new Option('--reconcile-seconds <n>', 'how often it looks for new and vanished VMs (default 300; tests)').argParser(h.positiveInt).hideHelp())
    .option('--json', 'print JSON', false)
    .action(async (name: string, o) => {
      const g = await h.withClient((c) => createGroup(c, { name, server: o.server, policy: policyOf(o, true) as Omit<GroupPolicy, 'server'>, members: membersOf(o), reconcileEveryMs: o.reconcileSeconds ? o.reconcileSeconds * 1000 : undefined }));
      out(o.json, g, () => `group ${g.name} made on ${g.policy.server}; its VMs are being protected (\`hvprotect group show ${g.name}\`)\n`);
    });
  group
    .command('list')
    .description('groups, their servers, members and VMs')
    .option('--json', 'print JSON', false)
    .action(async (o) => {
      const gs = await h.withClient(listGroups);
      out(o.json, gs, () =>
        table(
          gs.map((g) => ({ group: g.name, server: g.policy.server, members: memberNames(g), protected: g.protected.length, missing: g.missing.length, refused: g.refused.length })),
          ['group', 'server', 'members', 'protected', 'missing', 'refused'],
        ),
      );
    });
  group
    .command('show')
    .argument('<name>')
    .description('a group\'s policy, members, and every VM it protects, misses or refuses')
    .option('--json', 'print JSON', false)
    .action(async (name: string, o) => {
      const g = await h.withClient((c) => groupState(c, name));
      out(o.json, g, () => describeGroup(g));
    });
  policyOptions(group.command('set').argument('<name>').description('change the policy: the schedule and storage settings of its VMs follow'), h, false)
    .option('--json', 'print JSON', false)
    .action(async (name: string, o) => {
      const change = policyOf(o, false);
      if (!Object.keys(change).length) throw new UsageError('nothing to change: give --at, --every, --tz, --rpo, --retention-days, --max-points, --maxsize, --no-offline or --offline-method');
      const g = await h.withClient((c) => setGroupPolicy(c, name, change));
      out(o.json, g, () => `${describeGroup(g)}`);
    });
  memberOptions(group.command('add').argument('<name>').description('add members: a VM in another group is refused, naming it'))
    .option('--json', 'print JSON', false)
    .action(async (name: string, o) => {
      const members = membersOf(o);
      if (!members.length) throw new UsageError('add what? --vm NAME, --host NAME or --cluster NAME');
      const g = await h.withClient((c) => addMembers(c, name, members));
      out(o.json, g, () => `members of ${g.name}: ${memberNames(g)}\n`);
    });
  memberOptions(group.command('remove').argument('<name>').description('remove members; their VMs stay protected unless --unprotect'))
    .option('--unprotect', 'stop protecting the VMs they brought (their recovery points are kept)', false)
    .option('--json', 'print JSON', false)
    .action(async (name: string, o) => {
      const members = membersOf(o);
      if (!members.length) throw new UsageError('remove what? --vm NAME, --host NAME or --cluster NAME');
      const g = await h.withClient((c) => removeMembers(c, name, members, o.unprotect));
      out(o.json, g, () => `members of ${g.name}: ${memberNames(g) || '(none)'}\n`);
    });
  group
    .command('delete')
    .argument('<name>')
    .description('delete a group; refused while it protects VMs, unless --unprotect')
    .option('--unprotect', 'stop protecting its VMs first (their recovery points are kept)', false)
    .action(async (name: string, o) => {
      await h.withClient((c) => deleteGroup(c, name, o.unprotect));
      process.stdout.write(`group ${name} deleted\n`);
    });
}
