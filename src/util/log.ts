/**
 * A small leveled logger writing one line per event to stderr. Libraries log through it so that the CLI's
 * `--log-level` governs everything; embedders may replace the sink.
 */

export const LogLevel = { error: 0, warn: 1, info: 2, debug: 3 } as const;
export type LogLevelName = keyof typeof LogLevel;

let threshold: number = LogLevel.warn;
let sink: (line: string) => void = (line) => process.stderr.write(line + '\n');

/** Set the global threshold (messages above it are dropped). */
export function setLogLevel(level: LogLevelName): void {
  threshold = LogLevel[level];
}

/** Current threshold name. */
export function getLogLevel(): LogLevelName {
  return (Object.keys(LogLevel) as LogLevelName[]).find((k) => LogLevel[k] === threshold) ?? 'warn';
}

/** Replace where lines go (tests capture them). Returns the previous sink. */
export function setLogSink(next: (line: string) => void): (line: string) => void {
  const prev = sink;
  sink = next;
  return prev;
}

/** A logger bound to a component name. */
export interface Logger {
  error(message: string): void;
  warn(message: string): void;
  info(message: string): void;
  debug(message: string): void;
  enabled(level: LogLevelName): boolean;
  child(name: string): Logger;
}

/** Make a logger for a component. */
export function logger(component: string): Logger {
  const emit = (level: LogLevelName, message: string): void => {
    if (LogLevel[level] > threshold) return;
    sink(`${new Date().toISOString()} ${level.padEnd(5)} [${component}] ${message}`);
  };
  return {
    error: (m) => emit('error', m),
    warn: (m) => emit('warn', m),
    info: (m) => emit('info', m),
    debug: (m) => emit('debug', m),
    enabled: (level) => LogLevel[level] <= threshold,
    child: (name) => logger(`${component}:${name}`),
  };
}
