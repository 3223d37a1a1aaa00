"""The exceptions sparsekit reports to a user as one line, without a traceback.

Bad input, a busy or used run folder, a diverging run, a missing optional package: each raises
one of these with a message that names the cause.  The command line prints them as
``sparsekit: error: ...`` and a failing MPI rank (:func:`sparsekit.parallel.comm.guarded`) as
``sparsekit[rank r/N]: ...``; anything else is a bug and keeps its traceback.  With the
``sparsekit`` logger at DEBUG (``sparsekit -v``) the traceback is shown for these too.
"""

EXPECTED_ERRORS = (ValueError, OSError, RuntimeError, ImportError, ArithmeticError)
