import sys

from serve_app.batch.job import main

sys.exit(main())
