// The CLI's exit codes, one place for every command.
/** Bad usage or bad configuration (the message names the source, key, value, expectation). */
export const EXIT_USAGE = 2;
/** The metadata backend could not be reached at start-up (after metadata_retry_ms). */
export const EXIT_METADATA = 3;
