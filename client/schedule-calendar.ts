// Daily backup times in a time zone, as Temporal Schedule calendars that neither skip nor double
// a backup on daylight-saving days.
//
// Temporal matches a calendar's wall-clock time in the schedule's zone: on the day clocks go back
// an ambiguous time (02:30 in Europe/Berlin on the last Sunday of October) runs once (measured:
// at its second occurrence); on the day clocks go forward a time inside the gap (02:30 on the last
// Sunday of March) does not exist and Temporal skips that day's run (measured, test/protection/
// status.temporal.test.ts). So for each such day in the years ahead we add a one-day calendar at
// the first instant after the gap (03:30 there): the run happens, one hour late in wall-clock terms
// and on time in elapsed terms.
import type { CalendarSpec } from '@temporalio/client';

const DAY = 86_400_000;

const formats = new Map<string, Intl.DateTimeFormat>();
function format(zone: string, kind: 'offset' | 'parts'): Intl.DateTimeFormat {
  const key = `${zone} ${kind}`;
  let f = formats.get(key);
  if (!f) {
    f = kind === 'offset'
      ? new Intl.DateTimeFormat('en-US', { timeZone: zone, timeZoneName: 'longOffset' })
      : new Intl.DateTimeFormat('en-US', { timeZone: zone, hourCycle: 'h23', year: 'numeric', month: 'numeric', day: 'numeric', hour: 'numeric', minute: 'numeric' });
    formats.set(key, f);
  }
  return f;
}

function offsetMinutes(zone: string, at: number): number {
  const name = format(zone, 'offset').formatToParts(new Date(at)).find((p) => p.type === 'timeZoneName')!.value;
  const m = /GMT([+-])(\d{2}):?(\d{2})?/.exec(name);
  return m ? (m[1] === '-' ? -1 : 1) * (Number(m[2]) * 60 + Number(m[3] ?? 0)) : 0;
}

function localParts(zone: string, at: number): { y: number; mo: number; d: number; h: number; mi: number } {
  const parts = Object.fromEntries(
    format(zone, 'parts')
      .formatToParts(new Date(at))
      .map((p) => [p.type, Number(p.value)]),
  );
  return { y: parts.year, mo: parts.month, d: parts.day, h: parts.hour, mi: parts.minute };
}

/** Calendars for "HH:MM" times in `zone`, with the spring-forward days' runs added for `years` years from `from`. */
export function dailyCalendars(times: string[], zone: string, from = new Date(), years = 10): CalendarSpec[] {
  const parsed = times.map((t) => t.split(':').map(Number) as [number, number]);
  const out: CalendarSpec[] = parsed.map(([hour, minute], i) => ({ hour, minute, comment: `express full at ${times[i]}` }));
  const start = Date.UTC(from.getUTCFullYear(), from.getUTCMonth(), from.getUTCDate());
  for (let day = start; day < start + years * 366 * DAY; day += DAY) {
    const before = offsetMinutes(zone, day);
    const after = offsetMinutes(zone, day + DAY);
    if (after <= before) continue; // no change, or clocks went back (no time is missing then)
    // Clocks go forward somewhere in [day, day + 1 day) UTC; check every time on the local dates touched.
    for (const localDay of [day - DAY, day, day + DAY]) {
      const { y, mo, d } = localParts(zone, localDay + 12 * 3_600_000);
      for (const [i, [hour, minute]] of parsed.entries()) {
        const wall = Date.UTC(y, mo - 1, d, hour, minute);
        const exists = [before, after].some((off) => {
          const p = localParts(zone, wall - off * 60_000);
          return p.y === y && p.mo === mo && p.d === d && p.h === hour && p.mi === minute;
        });
        if (exists) continue;
        // The instant the time would have had under the old offset reads as the first time after the gap.
        const p = localParts(zone, wall - before * 60_000);
        const entry: CalendarSpec = { year: p.y, month: MONTHS[p.mo - 1], dayOfMonth: p.d, hour: p.h, minute: p.mi, comment: `express full at ${times[i]}: that time does not exist on ${y}-${String(mo).padStart(2, '0')}-${String(d).padStart(2, '0')} (clocks go forward)` };
        if (!out.some((c) => c.year === entry.year && c.month === entry.month && c.dayOfMonth === entry.dayOfMonth && c.hour === entry.hour && c.minute === entry.minute)) out.push(entry);
      }
    }
  }
  return out;
}

const MONTHS = ['JANUARY', 'FEBRUARY', 'MARCH', 'APRIL', 'MAY', 'JUNE', 'JULY', 'AUGUST', 'SEPTEMBER', 'OCTOBER', 'NOVEMBER', 'DECEMBER'] as const;
