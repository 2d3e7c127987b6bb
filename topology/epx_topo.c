/*
 * epx-topo: shows what the topology layer sees, like lstopo and
 * `nvidia-smi topo -m` do: this machine (probed) or a system description,
 * as a tree, a path matrix, its NVLink domains, a rank placement, JSON or
 * a Graphviz picture.  Command line, map selection and exit codes here;
 * each view in its own tool_*.c.
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "topology/tool.h"
#include "util/tool_io.h"

enum { EXIT_USAGE = 2 };

static const char usage[] =
"Usage: epx-topo [--system NAME|FILE] [VIEW] [--ranks N] [--host NAME]\n"
"                [--export FILE]\n"
"\n"
"Shows the topology epx sees: hosts, CPUs (NUMA nodes), GPUs, NVSwitches,\n"
"NICs, the links between them and the NVLink domains.  Without --system it\n"
"probes this machine (hwloc, NVML and the CUDA driver, each if present).\n"
"\n"
"Map:\n"
"  -s, --system NAME|FILE  a system description instead of the probe: a name\n"
"                          from the systems directory (see --list) or a path\n"
"                          to a .json file\n"
"  -l, --list              the shipped system descriptions, one per line\n"
"\n"
"Views (one at a time; default: the tree):\n"
"  (none)                  tree: host > CPU > GPUs (model, memory, PCI,\n"
"                          tray/slot, NVLink links and GB/s, domain, clique),\n"
"                          NVSwitches, NICs (line rate), and explicit links\n"
"  -m, --matrix            path class between every two GPUs and NICs of a\n"
"                          host, as nvidia-smi topo -m (X, NV#, C2C, PIX, PXB,\n"
"                          PHB, NODE, SYS, NET), CPU and NUMA affinity, one\n"
"                          block per host; with several hosts a last column\n"
"                          counts the paths to other hosts' GPUs per class\n"
"  -d, --domains           each domain: kind, id, size, cliques, per-GPU\n"
"                          NVLink GB/s, the hosts it spans\n"
"  -r, --ranks N           place N ranks (one per GPU in map order; without\n"
"                          GPUs, blocks per host) and show each rank's host,\n"
"                          GPU, tray and domain; with --json, --dot or --svg\n"
"                          the placement is added to that view instead\n"
"  -j, --json              one JSON object (schema: topology/epx-topo.md)\n"
"      --dot               a Graphviz graph on stdout\n"
"      --svg FILE          the graph rendered by Graphviz's dot into FILE\n"
"\n"
"Other:\n"
"      --host NAME         tree and matrix: only this host\n"
"  -e, --export FILE       write the map as a system description (loads back\n"
"                          to the same map); prints no view unless one is\n"
"                          asked for\n"
"  -h, --help              this text\n"
"\n"
"Bandwidths are GB/s (1e9 bytes/s) per direction; NIC speeds are line rates\n"
"in Gb/s.  Exit status: 0 done, 1 the map could not be made, placed, shown\n"
"or written (unknown system or host, bad description, no Graphviz for\n"
"--svg), 2 bad command line.\n"
"\n"
"Examples:\n"
"  epx-topo                          this machine as a tree\n"
"  epx-topo --system gb200-nvl72 --domains\n"
"  epx-topo --system hgx-h100-8 --matrix\n"
"  epx-topo --system gb200-nvl72-x2 --ranks 144 --json\n"
"  epx-topo --export here.json       this machine as a description\n";

enum { VIEW_TREE, VIEW_MATRIX, VIEW_DOMAINS, VIEW_RANKS, VIEW_JSON, VIEW_DOT,
       VIEW_SVG };
static const char *const view_opt[] = { "", "--matrix", "--domains", "--ranks",
                                        "--json", "--dot", "--svg" };

typedef struct opts {
    const char *system;
    const char *host;
    const char *export_path;
    const char *svg_path;
    int view;               /* -1: none asked for */
    int ranks;              /* 0: no placement */
    int list;
} opts_t;

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "epx-topo: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (see epx-topo --help)\n");
    return EXIT_USAGE;
}

static int set_view(opts_t *o, int view)
{
    if (o->view >= 0 && o->view != view) {
        fprintf(stderr, "epx-topo: %s and %s: one view at a time (see "
                        "epx-topo --help)\n", view_opt[o->view], view_opt[view]);
        return EXIT_USAGE;
    }
    o->view = view;
    return 0;
}

/* 0 parsed, EXIT_SUCCESS + 100 for --help done, else an exit code. */
static int parse(int argc, char **argv, opts_t *o)
{
    static const struct option lopts[] = {
        { "system", required_argument, NULL, 's' },
        { "list", no_argument, NULL, 'l' },
        { "matrix", no_argument, NULL, 'm' },
        { "domains", no_argument, NULL, 'd' },
        { "ranks", required_argument, NULL, 'r' },
        { "json", no_argument, NULL, 'j' },
        { "dot", no_argument, NULL, 'D' },
        { "svg", required_argument, NULL, 'S' },
        { "host", required_argument, NULL, 'H' },
        { "export", required_argument, NULL, 'e' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    int c, rc, ranks_given = 0;
    memset(o, 0, sizeof(*o));
    o->view = -1;
    opterr = 0;   /* our own messages, with the exit code of a usage error */
    while ((c = getopt_long(argc, argv, ":s:lmdr:je:h", lopts, NULL)) != -1) {
        rc = 0;
        switch (c) {
        case 's': o->system = optarg; break;
        case 'l': o->list = 1; break;
        case 'm': rc = set_view(o, VIEW_MATRIX); break;
        case 'd': rc = set_view(o, VIEW_DOMAINS); break;
        case 'j': rc = set_view(o, VIEW_JSON); break;
        case 'D': rc = set_view(o, VIEW_DOT); break;
        case 'S': rc = set_view(o, VIEW_SVG); o->svg_path = optarg; break;
        case 'H': o->host = optarg; break;
        case 'e': o->export_path = optarg; break;
        case 'h': fputs(usage, stdout); return 100;
        case 'r': {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (end == optarg || *end || n < 1 || n > 1000000)
                return usage_error("--ranks wants a rank count >= 1, not '%s'",
                                   optarg);
            o->ranks = (int)n;
            ranks_given = 1;
            break;
        }
        case ':':
            return usage_error("%s needs a value", argv[optind - 1]);
        default: {
            char sopt[3] = { '-', (char)optopt, 0 };
            return usage_error("unknown option '%s'",
                               optopt ? sopt : argv[optind - 1]);
        }
        }
        if (rc)
            return rc;
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);
    if (ranks_given && o->view < 0)
        o->view = VIEW_RANKS;
    if (ranks_given && (o->view == VIEW_MATRIX || o->view == VIEW_DOMAINS))
        return usage_error("--ranks does not combine with %s", view_opt[o->view]);
    if (o->host && o->view > VIEW_MATRIX)
        return usage_error("--host applies to the tree and --matrix, not %s",
                           view_opt[o->view]);
    if (o->list && (o->system || o->view >= 0 || o->export_path || o->host))
        return usage_error("%s lists the descriptions and takes no other option",
                           "--list");
    return 0;
}

/* Where descriptions are looked up by name: the loader's directories. */
static int systems_dirs(const char *dirs[4])
{
    int n = epx_topo_systems_dirs(dirs, 4);
    return n < 4 ? n : 4;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The system names found in the systems directories (each once, sorted),
 * one per line, or comma-separated on one line when `one_line`.  Returns
 * how many. */
static int list_systems(FILE *out, int one_line)
{
    const char *dirs[4];
    int nd = systems_dirs(dirs), n = 0, cap = 0;
    char **names = NULL;
    for (int i = 0; i < nd; i++) {
        DIR *d = opendir(dirs[i]);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            size_t len = strlen(e->d_name);
            if (len <= 5 || strcmp(e->d_name + len - 5, ".json") ||
                e->d_name[0] == '.')
                continue;
            int dup = 0;
            for (int k = 0; k < n && !dup; k++)
                dup = strlen(names[k]) == len - 5 &&
                      strncmp(names[k], e->d_name, len - 5) == 0;
            if (dup)
                continue;
            if (n == cap) {
                char **nn = realloc(names, sizeof(char *) * (size_t)(cap ? 2 * cap : 16));
                if (!nn)
                    break;
                names = nn;
                cap = cap ? 2 * cap : 16;
            }
            if (!(names[n] = strndup(e->d_name, len - 5)))
                break;
            n++;
        }
        if (d)
            closedir(d);
    }
    if (n)
        qsort(names, (size_t)n, sizeof(char *), cmp_str);
    for (int i = 0; i < n; i++) {
        fprintf(out, one_line ? "%s%s" : "%.0s%s\n", i ? ", " : "", names[i]);
        free(names[i]);
    }
    free(names);
    return n;
}

/* A system name (not a path) that names no file in the systems
 * directories: the loader would not find it. */
static int unknown_name(const char *s)
{
    size_t len = strlen(s);
    if (strchr(s, '/') || (len > 5 && strcmp(s + len - 5, ".json") == 0))
        return 0;
    const char *dirs[4];
    int nd = systems_dirs(dirs);
    for (int i = 0; i < nd; i++) {
        char path[4096];
        struct stat st;
        snprintf(path, sizeof(path), "%s/%s.json", dirs[i], s);
        if (stat(path, &st) == 0)
            return 0;
    }
    return 1;
}

static int make_map(const opts_t *o, epx_topo_t **topo)
{
    epx_status_t st = o->system ? epx_topo_load(o->system, topo)
                                : epx_topo_probe(topo);
    if (st == EPX_OK)
        return 0;
    const char *msg = epx_last_error();
    fprintf(stderr, "epx-topo: %s\n", msg && *msg ? msg : epx_status_str(st));
    if (o->system && unknown_name(o->system)) {
        fprintf(stderr, "epx-topo: available systems: ");
        if (!list_systems(stderr, 1))
            fprintf(stderr, "none found");
        fprintf(stderr, " (or give a path to a .json description)\n");
    }
    return 1;
}

/* Index of the host named `name`, or -1 after an error listing them. */
static int find_host(const tool_map_t *m, const char *name)
{
    char nb[32];
    for (int h = 0; h < m->nhosts; h++)
        if (strcmp(tool_obj_name(epx_topo_obj(m->topo, m->hosts[h]), nb,
                                 sizeof(nb)), name) == 0)
            return m->hosts[h];
    fprintf(stderr, "epx-topo: no host '%s' in %s; hosts:", name,
            epx_topo_name(m->topo));
    for (int h = 0; h < m->nhosts; h++)
        fprintf(stderr, "%s%s", h ? ", " : " ",
                tool_obj_name(epx_topo_obj(m->topo, m->hosts[h]), nb, sizeof(nb)));
    fprintf(stderr, "\n");
    return -1;
}

static int show(const opts_t *o, const tool_map_t *m)
{
    int host = -1;
    if (o->host && (host = find_host(m, o->host)) < 0)
        return 1;
    switch (o->view) {
    case VIEW_MATRIX: return tool_view_matrix(m, host, stdout);
    case VIEW_DOMAINS: return tool_view_domains(m, stdout);
    case VIEW_RANKS: return tool_view_ranks(m, stdout);
    case VIEW_JSON: return tool_view_json(m, stdout);
    case VIEW_DOT: return tool_view_dot(m, stdout);
    case VIEW_SVG: return tool_view_svg(m, o->svg_path);
    default: return tool_view_tree(m, host, stdout);
    }
}

static int topo_main(int argc, char **argv)
{
    opts_t o;
    int rc = parse(argc, argv, &o);
    if (rc)
        return rc == 100 ? 0 : rc;
    if (o.list)
        {
        if (list_systems(stdout, 0) > 0)
            return 0;
        fprintf(stderr, "epx-topo: no system descriptions found\n");
        return 1;
    }

    if ((o.svg_path && tool_writable("epx-topo", "--svg", o.svg_path)) ||
        (o.export_path && tool_writable("epx-topo", "--export", o.export_path)))
        return 1;
    epx_topo_t *topo = NULL;
    if (make_map(&o, &topo))
        return 1;
    if (o.ranks > 0 && epx_topo_place(topo, o.ranks) != EPX_OK) {
        fprintf(stderr, "epx-topo: %s\n", epx_last_error());
        epx_topo_destroy(topo);
        return 1;
    }
    if (o.export_path) {
        if (epx_topo_export(topo, o.export_path) != EPX_OK) {
            fprintf(stderr, "epx-topo: %s\n", epx_last_error());
            epx_topo_destroy(topo);
            return 1;
        }
        fprintf(stderr, "epx-topo: wrote %s (system %s)\n", o.export_path,
                epx_topo_name(topo));
    }
    tool_map_t m;
    if (tool_map_init(&m, topo) != 0) {
        fprintf(stderr, "epx-topo: out of memory\n");
        epx_topo_destroy(topo);
        return 1;
    }
    rc = 0;
    if (!o.export_path || o.view >= 0 || o.host)
        rc = show(&o, &m);
    tool_map_free(&m);
    epx_topo_destroy(topo);
    return rc;
}

int main(int argc, char **argv)
{
    int rc = topo_main(argc, argv);
    if (tool_stdout_close("epx-topo") && rc == 0)
        rc = 1;
    return rc;
}
