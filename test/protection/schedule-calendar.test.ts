// client/schedule-calendar.ts: the one-day calendars that keep a daily backup on the day clocks
// go forward. Instants are checked with Intl (the platform's tz database), not by our arithmetic.
import { dailyCalendars } from '../../client/schedule-calendar';

const extras = (times: string[], zone: string, years = 2) =>
  dailyCalendars(times, zone, new Date('2027-01-01T00:00:00Z'), years)
    .filter((c) => c.year !== undefined)
    .map((c) => `${c.year}-${c.month} ${c.dayOfMonth} ${String(c.hour).padStart(2, '0')}:${String(c.minute).padStart(2, '0')}`);

test('Europe/Berlin 02:30: the last Sunday of March each year, at 03:30; nothing in October (02:30 runs once then)', () => {
  expect(extras(['02:30'], 'Europe/Berlin')).toEqual(['2027-MARCH 28 03:30', '2028-MARCH 26 03:30']);
  const all = dailyCalendars(['02:30'], 'Europe/Berlin', new Date('2027-01-01T00:00:00Z'), 2);
  expect(all[0]).toEqual({ hour: 2, minute: 30, comment: 'express full at 02:30' });
  expect(all[1].comment).toBe('express full at 02:30: that time does not exist on 2027-03-28 (clocks go forward)');
});

test('times outside the gap and zones without daylight saving get no extra calendar', () => {
  expect(extras(['01:59', '03:00', '14:00'], 'Europe/Berlin')).toEqual([]);
  expect(extras(['02:30'], 'UTC')).toEqual([]);
  expect(extras(['02:30'], 'Asia/Tokyo')).toEqual([]);
});

test('other zones: New York in March, Sydney in October, Lord Howe with its half-hour change', () => {
  expect(extras(['02:15'], 'America/New_York', 1)).toEqual(['2027-MARCH 14 03:15']);
  expect(extras(['02:00', '02:59'], 'Australia/Sydney', 1)).toEqual(['2027-OCTOBER 3 03:00', '2027-OCTOBER 3 03:59']);
  expect(extras(['02:10'], 'Australia/Lord_Howe', 1)).toEqual(['2027-OCTOBER 3 02:40']);
});

test('ten years ahead by default: one extra run per spring-forward day', () => {
  const cals = dailyCalendars(['02:30'], 'Europe/Berlin', new Date('2026-11-30T00:00:00Z'));
  expect(cals.filter((c) => c.year !== undefined).map((c) => c.year)).toEqual([2027, 2028, 2029, 2030, 2031, 2032, 2033, 2034, 2035, 2036]);
});
