"""The grader's parts; the entry point is :mod:`exercises_lib.grade`.

A student's notebook runs in a kernel it controls; nothing that kernel says
is believed. The grader

1. executes the notebook (:mod:`.kernel`) in a temporary folder, its own
   session and process group, with an environment stripped of the grader's
   secrets, a per-cell timeout and an overall time limit; a last cell it
   appends serialises each exercise's function (cloudpickle, by value; a
   course model the function refers to is replaced by a placeholder);
2. kills every process the notebook left behind (:mod:`.sandbox`) and checks
   that the installed course package is unchanged (hashes of its files,
   restored if a notebook changed them);
3. hands the functions to a grading worker (:mod:`.worker`): a fresh
   interpreter started before any notebook ran, with its own copy of the
   course's checks and models. The learner's function runs in a forked child
   of the worker; only its outputs come back, and the worker decides each
   verdict with the course's own check on its own inputs;
4. writes the report (:mod:`.report`, JSON schema ``report.schema.json``)
   once every process the notebook started is dead.

What this defends against, and what it does not, is in the instructors'
guide (``book/instructors.md``, "Checking students' work").

Taught in: the instructors' guide.
"""
