// JSON schema pieces shared by the route modules. Bodies are validated without type coercion
// (a string is not a number); query values are strings, so their numbers are digit patterns
// (15 digits stay below 2^53, and far above the 64 TiB largest disk).
export const digits = { type: 'string', pattern: '^[0-9]{1,15}$' } as const;
export const text = (maxLength: number) => ({ type: 'string', maxLength }) as const;
