/*
 * Output checks shared by the tools (epx-bench, epx-topo, epx-balance):
 * compiled into each program, not part of libepx.
 */
#ifndef EPX_UTIL_TOOL_IO_H
#define EPX_UTIL_TOOL_IO_H

/* Output that did not reach stdout (a full disk, a closed pipe) is a
 * failure: flushes and closes stdout, says why on stderr ("PROG: cannot
 * write stdout: ...").  Returns nonzero on failure.  Call once, at exit. */
int tool_stdout_close(const char *prog);

/* FILE, given to option OPT, may be written: its directory exists and is
 * writable, and FILE, if there, is a writable regular file.  Nothing is
 * created.  Returns 0, or -1 after a one-line message naming OPT and FILE. */
int tool_writable(const char *prog, const char *opt, const char *file);

#endif /* EPX_UTIL_TOOL_IO_H */
