/*
 * Where this copy of libepx finds its installed files.  A library running
 * from its build tree uses the tree; an installed one the directories it
 * was configured with, or, when the install was moved, the same layout
 * around wherever the library now is.
 */
#ifndef EPX_UTIL_PATHS_H
#define EPX_UTIL_PATHS_H

enum { EPX_PATH_MODULES, EPX_PATH_SYSTEMS };

/* Up to `max` directories, most specific first (environment overrides are
 * the caller's).  Returns how many; the strings live for the process. */
int epx__paths(int kind, const char **dirs, int max);

#endif /* EPX_UTIL_PATHS_H */
