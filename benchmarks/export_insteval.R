# Write lme4's InstEval (73,421 lecture ratings: students s crossed with lecturers d, in 14
# departments) to benchmarks/data/insteval.csv for benchmarks/bench_crossed.py.
#
#   Rscript benchmarks/export_insteval.R      # from the repository root
#
# The CSV is not committed (it is lme4's data set; this script regenerates it where R is).
suppressPackageStartupMessages(library(lme4))
dir.create("benchmarks/data", showWarnings = FALSE, recursive = TRUE)
d <- lme4::InstEval
out <- data.frame(s = as.character(d$s), d = as.character(d$d), dept = as.character(d$dept),
                  service = as.integer(as.character(d$service)), studage = as.character(d$studage),
                  lectage = as.character(d$lectage), y = d$y)
write.csv(out, "benchmarks/data/insteval.csv", row.names = FALSE)
cat("wrote benchmarks/data/insteval.csv:", nrow(out), "rows\n")
