/* topology map builder and queries: being written */
