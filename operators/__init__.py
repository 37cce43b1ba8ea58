"""earmark's stages. Importing the package makes every S3 call of this process retry the store's transient
answers (see operators.storage.retry_transient): the driver and every Ray worker that runs a stage import it."""
from operators.storage import retry_transient

retry_transient()
